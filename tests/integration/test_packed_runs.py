"""Run files of causal models keep scores and pattern as packed lower triangles: they read back
as the very squares an unpacked run (and the live capture) holds, take about half the bytes,
are checksummed, follow the README's h5py-only recipe, refuse what is not lower triangular,
and leave encoders' files and old (schema version 1) files as they were."""

from __future__ import annotations

import copy
import os

import h5py
import numpy as np
import pytest

from conftest import SENTENCES, _tiny, flip_byte_in_chunk, random_sentences
from probe import AttentionProbe, capture, open_run
from probe.cli import main
from probe.errors import InputError
from probe.store import CorruptRunError, NotTriangularError, read_attr
from probe.verify import verify_run

PACKED = ("scores", "pattern")


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()  # bit for bit: -inf, signed zeros, NaN alike


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_packed_run_reads_back_what_an_unpacked_run_and_the_live_capture_hold(
        arch, tokenizer, tmp_path, monkeypatch):
    with AttentionProbe(_tiny(arch), tokenizer) as p:
        live = p.run(SENTENCES, batch_size=2)
        packed = p.run_to_file(SENTENCES, tmp_path / "packed.h5", batch_size=2)
        square = p.run_to_file(SENTENCES, tmp_path / "square.h5", batch_size=2,
                               pack_causal=False)
        # the long-sequence path: layers computed over query blocks (which may round the last
        # bit differently from whole layers), each layer packed as soon as it is computed
        monkeypatch.setattr(capture, "BLOCKS_ABOVE_BYTES", 0)
        monkeypatch.setattr(capture, "BLOCK_BYTES", 1)  # blocks of one query row
        streamed = p.run_to_file(SENTENCES, tmp_path / "streamed.h5", batch_size=2,
                                 stream="layer")
        streamed_square = p.run_to_file(SENTENCES, tmp_path / "streamed_square.h5",
                                        batch_size=2, stream="layer", pack_causal=False)
    with packed, square, streamed, streamed_square:
        assert packed.attrs["triangle_keys"] == sorted(
            k for k in packed.attrs["stored_keys"] if k.endswith(PACKED))
        assert "triangle_keys" not in square.attrs
        assert packed.keys == square.keys == live.keys
        for a, b, c, d, e in zip(packed, square, live, streamed, streamed_square):
            for key in live.keys:  # value_weighted is derived from the unpacked pattern
                _same(a[key], b[key])
                _same(a[key], c[key].astype(np.float32))
                _same(d[key], e[key])
        assert verify_run(packed.path).ok
    with h5py.File(tmp_path / "packed.h5", "r") as f, h5py.File(tmp_path / "square.h5", "r") as g:
        for layer in f["blocks"]:
            for c in f[f"blocks/{layer}/attn"]:
                ds, sq = f[f"blocks/{layer}/attn/{c}"], g[f"blocks/{layer}/attn/{c}"]
                assert ds.attrs["unit"] == ("triangle" if c in PACKED else sq.attrs["unit"])
                if c in PACKED:
                    assert ds.attrs["above_diagonal"] == {"scores": -np.inf, "pattern": 0.0}[c]
                    assert ds.shape[0] < 0.6 * sq.shape[0]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_packed_16_bit_runs_equal_unpacked_ones(dtype, tokenizer, tmp_path):
    with AttentionProbe(_tiny("llama"), tokenizer, keys=["scores", "pattern"]) as p:
        packed = p.run_to_file(SENTENCES, tmp_path / "p.h5", dtype=dtype)
        square = p.run_to_file(SENTENCES, tmp_path / "s.h5", dtype=dtype, pack_causal=False)
    with packed, square:
        for a, b in zip(packed, square):
            for key in a:
                _same(a[key], b[key])


def test_an_encoder_run_is_stored_as_before(tokenizer, tmp_path):
    with AttentionProbe(_tiny("bert"), tokenizer, keys=["scores", "pattern", "q"]) as p:
        default = p.run_to_file(SENTENCES, tmp_path / "a.h5", batch_size=2)
        off = p.run_to_file(SENTENCES, tmp_path / "b.h5", batch_size=2, pack_causal=False)
    default.close(), off.close()
    with h5py.File(tmp_path / "a.h5", "r") as f, h5py.File(tmp_path / "b.h5", "r") as g:
        assert "triangle_keys" not in f.attrs
        names = []
        f.visit(names.append)
        for name in names:
            if isinstance(f[name], h5py.Dataset):
                attrs = [{k: read_attr(v) for k, v in h[name].attrs.items()} for h in (f, g)]
                assert attrs[0] == attrs[1], name
                assert "above_diagonal" not in f[name].attrs
                if not name.startswith("state"):
                    np.testing.assert_array_equal(f[name][()], g[name][()], err_msg=name)
        assert {f[f"blocks/0/attn/{c}"].attrs["unit"] for c in PACKED} == {"square"}


def test_packing_roughly_halves_a_pattern_run(tokenizer, tmp_path):
    texts = [" ".join(random_sentences(2, seed=i)) for i in range(32)]  # long rows, up to 64
    with AttentionProbe(_tiny("llama"), tokenizer, keys=["pattern"]) as p:
        p.run_to_file(texts, tmp_path / "p.h5", truncate=True).close()
        p.run_to_file(texts, tmp_path / "s.h5", truncate=True, pack_causal=False).close()
    assert os.path.getsize(tmp_path / "p.h5") < 0.6 * os.path.getsize(tmp_path / "s.h5")


def test_h5py_alone_reads_a_triangle_by_the_readme_recipe(tokenizer, tmp_path):
    with AttentionProbe(_tiny("gpt2"), tokenizer, keys=["scores", "value_norm"]) as p:
        live = p.run(SENTENCES, batch_size=2)
        p.run_to_file(SENTENCES, tmp_path / "run.h5", batch_size=2).close()
    with h5py.File(tmp_path / "run.h5", "r") as f:  # README: "Reading example row with h5py alone"
        for row in range(int(f["state/n_done"][0])):
            ex = live[int(f["index/example"][row])]
            for key in ("blocks.1.attn.scores", "blocks.0.attn.value_norm"):
                n = int(f["index/n_tokens"][row])
                ds = f[f"blocks/{key.split('.')[1]}/attn/{key.split('.')[3]}"]
                unit, per_unit = ds.attrs["unit"], int(ds.attrs["per_unit"])
                t0, q0 = int(f["index/token_start"][row]), int(f["index/square_start"][row])
                start = {"token": t0, "square": q0, "triangle": (q0 + t0) // 2}[unit] * per_unit
                units = {"token": n, "square": n * n, "triangle": n * (n + 1) // 2}[unit]
                x = ds[start:start + units * per_unit]
                if unit == "triangle":
                    square = np.full((per_unit, n, n), ds.attrs["above_diagonal"], x.dtype)
                    square[:, np.tri(n, dtype=bool)] = x.reshape(per_unit, -1)
                    x = square
                x = x.reshape([s or n for s in ds.attrs["sizes"]])
                _same(x, ex[key])


def test_a_flipped_byte_in_a_triangle_is_caught_by_read_and_verify(tokenizer, tmp_path, capsys):
    path = tmp_path / "run.h5"
    with AttentionProbe(_tiny("llama"), tokenizer, keys=["pattern"]) as p:
        p.run_to_file(SENTENCES, path, batch_size=2).close()
    with h5py.File(path, "r") as f:
        assert f["blocks/1/attn/pattern"].attrs["unit"] == "triangle"
    flip_byte_in_chunk(path, "blocks/1/attn/pattern")
    with open_run(path) as run:
        first = int(run.index["example"][0])  # row 0 lives in chunk 0
        with pytest.raises(CorruptRunError,
                           match=f"blocks.1.attn.pattern.*example {first}.*checksum"):
            run[first]["blocks.1.attn.pattern"]
    assert main(["verify", str(path)]) == 1
    assert "/blocks/1/attn/pattern elements 0.." in capsys.readouterr().out


def test_a_layer_that_is_not_causal_is_refused_at_write_time(tokenizer, tmp_path):
    model = copy.deepcopy(_tiny("bert"))  # _tiny's models are shared between tests
    for module in model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = True  # claims causality, attends both ways
    with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
        with pytest.raises(NotTriangularError, match=r"blocks\.0\.attn\.pattern: row 0 of the "
                           r"batch \(\d+ tokens\) holds .* above the diagonal.*--no-pack-causal"):
            p.run_to_file(SENTENCES, tmp_path / "run.h5", batch_size=2)
        with p.run_to_file(SENTENCES, tmp_path / "ok.h5", pack_causal=False) as run:
            assert len(run) == len(SENTENCES)


def test_a_schema_version_1_file_still_reads_and_resumes_unpacked(tokenizer, tmp_path):
    """A version 1 file is a version 2 file without triangles (what pack_causal=False writes)."""
    path = tmp_path / "old.h5"
    with AttentionProbe(_tiny("llama"), tokenizer, keys=["scores", "pattern"]) as p:
        live = p.run(SENTENCES, batch_size=2)
        p.run_to_file(SENTENCES[:3], tmp_path / "part.h5", batch_size=2,
                      pack_causal=False).close()
        p.run_to_file(SENTENCES, path, batch_size=2, pack_causal=False).close()
        with h5py.File(path, "r+") as f:
            f.attrs["schema_version"] = 1
            f["state/complete"][0] = 0
            f["state/n_done"][0] = 2  # an interrupted version 1 run
        with pytest.raises(InputError, match="settings differ \\(triangle_keys"):
            p.run_to_file(SENTENCES, path, batch_size=2, resume=True)
        with p.run_to_file(SENTENCES, path, batch_size=2, resume=True, pack_causal=False) as run:
            assert run.attrs["schema_version"] == 1 and run.complete
            for a, b in zip(run, live):
                for key in a:
                    _same(a[key], b[key])
    assert verify_run(path).ok


def test_cli_no_pack_causal(tmp_path, tokenizer, capsys):
    folder = tmp_path / "tiny-llama"
    _tiny("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    src = tmp_path / "in.txt"
    src.write_text("\n".join(SENTENCES) + "\n")
    for flag, out in (([], "packed.h5"), (["--no-pack-causal"], "square.h5")):
        assert main(["capture", str(src), "--out", str(tmp_path / out), "--model", str(folder),
                     "--keys", "pattern", "--quiet", *flag]) == 0
    with open_run(tmp_path / "packed.h5") as a, open_run(tmp_path / "square.h5") as b:
        assert "triangle_keys" in a.attrs and "triangle_keys" not in b.attrs
        for x, y in zip(a, b):
            _same(x["blocks.0.attn.pattern"], y["blocks.0.attn.pattern"])


@pytest.mark.parametrize("copy_tensors", [False, True])
def test_shards_of_a_packed_run_combine_to_the_whole_run(copy_tensors, tokenizer, tmp_path):
    """combine, as a view or a copy, keeps the triangles: the joined run reads back what one
    unsharded run holds, bit for bit."""
    from probe.store import combine

    texts = random_sentences(10, seed=3)
    with AttentionProbe(_tiny("llama"), tokenizer, keys=["scores", "pattern", "z"]) as p:
        for k in range(2):
            p.run_to_file(texts, tmp_path / f"shard-{k}-of-2.h5", window=4, shard=f"{k}/2").close()
        p.run_to_file(texts, tmp_path / "whole.h5", window=4).close()
    combine([tmp_path / "shard-0-of-2.h5", tmp_path / "shard-1-of-2.h5"],
            tmp_path / "joined.h5", copy=copy_tensors)
    with open_run(tmp_path / "joined.h5") as joined, open_run(tmp_path / "whole.h5") as whole:
        assert read_attr(joined.attrs["triangle_keys"]) == read_attr(whole.attrs["triangle_keys"])
        by_index = {ex.index: ex for ex in joined}
        assert len(by_index) == len(whole) == len(texts)
        for ex in whole:
            for key in ex:
                _same(by_index[ex.index][key], ex[key])
    assert verify_run(tmp_path / "joined.h5").ok
