"""Head selection (``heads=``, ``--heads``) and bfloat16 run files (``--dtype bfloat16``).

Selected heads must equal the same heads of a full capture bit for bit, in memory and through a
run file; bfloat16 files must read back exactly ``tensor.to(torch.bfloat16).float()``.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from conftest import SENTENCES, _tiny
from probe import AttentionProbe, open_run
from probe.errors import InputError
from probe.selection import parse_heads
from probe.store import combine
from probe.verify import verify_run


def _axis_heads(capture, key):
    layer, component = int(key.split(".")[1]), key.split(".")[-1]
    return capture.kv_heads[layer] if component in ("k", "v") else capture.heads[layer]


def _assert_same_heads(selected, full):
    for i in range(len(full)):
        for key in selected.keys:
            got, want = selected[i][key], full[i][key][_axis_heads(selected, key)]
            assert got.shape == want.shape, key
            assert np.array_equal(got, want, equal_nan=True), key


@pytest.mark.parametrize("arch, spec, heads, kv_heads", [
    ("llama", "1.3,0.0,0.3", {0: [0, 3], 1: [3]}, {0: [0, 1], 1: [1]}),
    ("llama", {1: [1, 0]}, {1: [0, 1]}, {1: [0]}),
    ("bert", "0.2,1.*", {0: [2], 1: [0, 1, 2, 3]}, {0: [2], 1: [0, 1, 2, 3]}),
])
def test_selected_heads_equal_the_full_capture(tokenizer, tmp_path, arch, spec, heads, kv_heads):
    model = _tiny(arch)
    with AttentionProbe(model, tokenizer) as p:
        full = p.run(SENTENCES, batch_size=2)
    with AttentionProbe(model, tokenizer, heads=spec) as p:
        selected = p.run(SENTENCES, batch_size=2)
        run = p.run_to_file(SENTENCES, tmp_path / "run.h5", batch_size=2)
    assert selected.heads == heads and selected.kv_heads == kv_heads
    assert selected[0].heads == heads
    assert selected.layers == tuple(sorted(heads))  # without layers=: only the named layers
    _assert_same_heads(selected, full)
    with run:
        assert run.heads == heads and run.kv_heads == kv_heads and run[1].heads == heads
        _assert_same_heads(run, full)
        assert verify_run(run.path).ok


def test_heads_with_layers_keep_other_layers_whole(tokenizer):
    model = _tiny("llama")
    with AttentionProbe(model, tokenizer, layers=[0], heads="1.2", keys=["pattern", "k"]) as p:
        cap = p.run(SENTENCES[:2])
    assert cap.heads == {0: [0, 1, 2, 3], 1: [2]} and cap.kv_heads == {0: [0, 1], 1: [1]}
    assert cap[0]["blocks.0.attn.pattern"].shape[0] == 4
    assert cap[0]["blocks.1.attn.pattern"].shape[0] == 1
    assert cap[0]["blocks.1.attn.k"].shape[0] == 1
    assert cap.select(layers=[1]).heads == {1: [2]}


def test_run_heads_argument_narrows_for_one_call(tokenizer):
    model = _tiny("llama")
    with AttentionProbe(model, tokenizer, keys=["z"]) as p:
        narrow = p.run(SENTENCES[:2], heads="0.1")
        whole = p.run(SENTENCES[:2])
    with AttentionProbe(model, tokenizer, layers=[0]) as p:
        with pytest.raises(InputError, match="not captured by this probe"):
            p.run(SENTENCES[:2], heads="1.0")
    assert narrow.heads == {0: [1], 1: [0, 1, 2, 3]}
    assert whole.heads == {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}


@pytest.mark.parametrize("spec, message", [
    ("3.1", "layer 3 does not exist"),
    ("-3.0", "layer -3 does not exist"),
    ("0.4", "head 4 does not exist: layer 0 has heads 0..3"),
    ("0", "is not LAYER.HEAD"),
    ("a.1", "is not LAYER.HEAD"),
    ("0.x", "is not LAYER.HEAD"),
    ("", "is not LAYER.HEAD"),
    ({0: [-1]}, "is not a head index"),
])
def test_bad_head_selections_are_refused(tokenizer, spec, message):
    with pytest.raises(InputError, match=message):
        AttentionProbe(_tiny("llama"), tokenizer, heads=spec)


def test_parse_heads_forms():
    assert parse_heads("-1.2, 0.1", n_layers=2, n_heads=4) == {0: (1,), 1: (2,)}
    assert parse_heads(["0.*"], n_layers=2, n_heads=3) == {0: (0, 1, 2)}
    assert parse_heads({1: 3, 0: "*"}, n_layers=2, n_heads=2 + 2) == {0: (0, 1, 2, 3), 1: (3,)}
    assert parse_heads(None, n_layers=2) == {}


def test_resume_refuses_another_head_selection(tokenizer, tmp_path):
    model, out = _tiny("llama"), tmp_path / "run.h5"
    with AttentionProbe(model, tokenizer, heads="0.1") as p:
        p.run_to_file(SENTENCES, out, batch_size=2).close()
    for other in ("0.2", None):
        with AttentionProbe(model, tokenizer, layers=[0], heads=other) as p:
            with pytest.raises(InputError, match="heads"):
                p.run_to_file(SENTENCES, out, batch_size=2, resume=True)
    with AttentionProbe(model, tokenizer, heads="0.1") as p:
        p.run_to_file(SENTENCES, out, batch_size=2, resume=True).close()  # same: accepted


def test_cli_heads_and_errors(tiny_model_dir, tmp_path, capsys):
    from probe.cli import main

    src = tmp_path / "in.txt"
    src.write_text("\n".join(SENTENCES) + "\n")
    out = tmp_path / "run.h5"
    assert main(["capture", str(src), "--out", str(out), "--model", str(tiny_model_dir),
                 "--heads", "1.3,0.*", "--dtype", "bfloat16", "--quiet"]) == 0
    with open_run(out) as run:
        assert run.heads == {0: [0, 1, 2, 3], 1: [3]}
        assert run.attrs["dtype"] == "bfloat16"
    for bad, message in (("1.9", "head 9 does not exist"), ("7.0", "layer 7 does not exist"),
                         ("1-2", "is not LAYER.HEAD")):
        assert main(["capture", str(src), "--model", str(tiny_model_dir), "--heads", bad]) == 2
        err = capsys.readouterr().err
        assert "probe: error:" in err and message in err


# ----------------------------------------------------------------------- bfloat16 run files
def _bf16(x):
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16).float().numpy()


def test_bfloat16_round_trip_size_and_plain_h5py(tokenizer, tmp_path):
    model = _tiny("llama")
    with AttentionProbe(model, tokenizer) as p:
        live = p.run(SENTENCES, batch_size=2)
        f32 = p.run_to_file(SENTENCES, tmp_path / "f32.h5", batch_size=2)
        b16 = p.run_to_file(SENTENCES, tmp_path / "b16.h5", batch_size=2, dtype="bfloat16")
    with f32, b16:
        stored = b16.attrs["stored_keys"]
        for i in range(len(live)):
            for key in stored:
                got = b16[i][key]
                assert got.dtype == np.float32
                assert np.array_equal(got, _bf16(live[i][key]), equal_nan=True), key
                assert np.array_equal(f32[i][key], live[i][key], equal_nan=True), key
        assert verify_run(b16.path).ok
    tensor_bytes = {}
    for name in ("f32", "b16"):
        with h5py.File(tmp_path / f"{name}.h5", "r") as f:
            tensor_bytes[name] = sum(f[f"blocks/{layer}/attn/{c}"].id.get_storage_size()
                                     for layer in f["blocks"] for c in f[f"blocks/{layer}/attn"])
    # the tensors take half the bytes (a file this tiny is mostly attributes and index, so
    # whole-file sizes are compared by their tensor storage)
    assert 0.45 < tensor_bytes["b16"] / tensor_bytes["f32"] < 0.55
    # plain h5py + numpy, as the README says
    with h5py.File(tmp_path / "b16.h5", "r") as f:
        ds = f["blocks/1/attn/pattern"]
        assert ds.dtype == np.uint16 and ds.attrs["stored_dtype"] == "bfloat16"
        row = 0
        L, per_unit = int(f["index/n_tokens"][row]), int(ds.attrs["per_unit"])
        assert ds.attrs["unit"] == "triangle"  # a causal layer's pattern: its lower triangles
        s0 = (f["index/square_start"][row] + f["index/token_start"][row]) // 2 * per_unit
        raw = ds[s0:s0 + L * (L + 1) // 2 * per_unit]
        x = np.full((per_unit, L, L), ds.attrs["above_diagonal"], np.float32)
        values = (raw.astype(np.uint32) << 16).view(np.float32)
        x[:, np.tri(L, dtype=bool)] = values.reshape(per_unit, -1)
        example = int(f["index/example"][row])
        assert np.array_equal(x, _bf16(live[example]["blocks.1.attn.pattern"]))


def test_bfloat16_of_a_bfloat16_model_is_exact(tokenizer, tmp_path):
    model = _tiny("bert")
    copy = type(model)(model.config).eval()
    copy.load_state_dict(model.state_dict())
    copy = copy.to(torch.bfloat16)
    with AttentionProbe(copy, tokenizer, keys=["pattern", "q"]) as p:
        live = p.run(SENTENCES[:3])
        run = p.run_to_file(SENTENCES[:3], tmp_path / "b.h5", dtype="bfloat16")
    with run:
        for i in range(3):
            for key in run.keys:
                assert np.array_equal(run[i][key], live[i][key], equal_nan=True)


def test_bfloat16_resume_and_combine(tokenizer, tmp_path):
    model = _tiny("llama")
    with AttentionProbe(model, tokenizer, heads="1.2") as p:
        whole = p.run_to_file(SENTENCES, tmp_path / "whole.h5", batch_size=1, window=2,
                              dtype="bfloat16")
        with pytest.raises(InputError, match="dtype"):
            p.run_to_file(SENTENCES, tmp_path / "whole.h5", batch_size=1, window=2,
                          dtype="float16", resume=True)
        for k in range(2):
            p.run_to_file(SENTENCES, tmp_path / f"s{k}.h5", batch_size=1, window=2,
                          dtype="bfloat16", shard=f"{k}/2").close()
        # an interrupted shard: keep its first committed rows, then resume it
        part = tmp_path / "s0.h5"
        with h5py.File(part, "r+") as f:
            f["state/n_done"][0] = 1
            f["state/complete"][0] = 0
        p.run_to_file(SENTENCES, part, batch_size=1, window=2, dtype="bfloat16",
                      shard="0/2", resume=True).close()
    combine([tmp_path / "s0.h5", tmp_path / "s1.h5"], tmp_path / "combined.h5")
    with whole, open_run(tmp_path / "combined.h5") as comb:
        assert len(comb) == len(whole) == len(SENTENCES)
        assert comb.heads == whole.heads == {1: [2]} and comb.kv_heads == {1: [1]}
        with h5py.File(tmp_path / "combined.h5", "r") as f:
            assert f["blocks/1/attn/q"].attrs["stored_dtype"] == "bfloat16"
            assert f["blocks/1/attn/q"].dtype == np.uint16
        for i in range(len(whole)):
            for key in whole.attrs["stored_keys"]:
                assert np.array_equal(comb[i][key], whole[i][key], equal_nan=True), key
    assert verify_run(tmp_path / "combined.h5").ok


def test_analyses_refuse_a_head_selected_capture(tiny_model_dir, tmp_path):
    """Per-head tables, the study and the view label heads by position: on a capture of
    selected heads they would name the wrong heads, so they refuse it, in memory and on disk."""
    from probe import open_run
    from probe.captures import require_every_head
    from probe.cli import main
    from probe.report import write_report
    from probe.view import build_view

    texts = tmp_path / "in.txt"
    texts.write_text("A robin is a bird.\nCats purr.\n")
    assert main(["capture", str(texts), "--model", str(tiny_model_dir), "--heads", "1.2,1.3",
                 "--keys", "pattern", "--out", str(tmp_path / "sel.h5"), "--quiet"]) == 0
    with open_run(tmp_path / "sel.h5") as run:
        with pytest.raises(InputError, match="selected heads only"):
            write_report(run, tmp_path / "m")
        with pytest.raises(InputError, match="selected heads only"):
            build_view(run[0])
    assert main(["metrics", str(tmp_path / "sel.h5"), "--out", str(tmp_path / "m2")]) == 2
    assert main(["capture", str(texts), "--model", str(tiny_model_dir), "--keys", "pattern",
                 "--out", str(tmp_path / "all.h5"), "--quiet"]) == 0
    with open_run(tmp_path / "all.h5") as run:
        require_every_head(run, "x")            # every head: accepted
        require_every_head(run[0], "x")
