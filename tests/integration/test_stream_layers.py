"""Layer streaming (`stream="layer"`): each layer's tensors are written as soon as the layer is
computed, nothing is kept, and the file equals the one the batch mode writes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from conftest import _tiny

from probe import AttentionProbe, run_writing
from probe.errors import InputError, ProbeError
from probe.store import RunWriter, open_run

TEXTS = ["A robin is a bird.", "No.", "The cat sat on the mat and looked at the bird for long.",
         "Dogs bark at night.", "A sparrow is not a fish.", "Yes it is."]


def _datasets(path) -> dict:
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return found


def _write(model, tokenizer, path, **options):
    with AttentionProbe(model, tokenizer, keys=options.pop("keys", None)) as p:
        p.run_to_file(TEXTS, path, batch_size=4, **options).close()


@pytest.mark.parametrize("arch,dtype", [("llama", "float32"), ("bert", "float32"),
                                        ("llama", "bfloat16")])
def test_layer_streaming_writes_the_same_file(tmp_path, tokenizer, arch, dtype):
    model = _tiny(arch)
    _write(model, tokenizer, tmp_path / "batch.h5", stream="batch", dtype=dtype)
    _write(model, tokenizer, tmp_path / "layer.h5", stream="layer", dtype=dtype)
    a, b = _datasets(tmp_path / "batch.h5"), _datasets(tmp_path / "layer.h5")
    assert sorted(a) == sorted(b) and any(k.startswith("blocks/1/attn/") for k in a)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name], b[name], equal_nan=True), name


def test_pieces_smaller_than_a_row_give_the_same_file(tmp_path, tokenizer, monkeypatch):
    """Streamed keys are packed in pieces of at most PIECE_VALUES values; pieces that cut
    heads and query rows apart must join up to the same bytes."""
    from probe.store import packing

    model = _tiny("llama")
    _write(model, tokenizer, tmp_path / "batch.h5", stream="batch", keys=["pattern", "q"])
    monkeypatch.setattr(packing, "PIECE_VALUES", 7)
    _write(model, tokenizer, tmp_path / "layer.h5", stream="layer", keys=["pattern", "q"])
    a, b = _datasets(tmp_path / "batch.h5"), _datasets(tmp_path / "layer.h5")
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_layer_streaming_keeps_no_layer(tokenizer):
    """While a layer is handed over, the probe holds no tensor of any layer."""
    model = _tiny("llama")
    seen = []
    with AttentionProbe(model, tokenizer, keys=["pattern", "q"]) as p:
        def on_layer(layer, got, spans):
            held = [t for tensors in p._recorder._pending.values() for t in tensors.values()]
            seen.append((layer, sorted(got), len(held), spans))
        rows = [tokenizer("A robin is a bird.")["input_ids"], tokenizer("No.")["input_ids"]]
        p.stream_ids(rows, on_layer)
        assert not p.captures  # no Capture either
        cap = p.capture_ids(rows)  # and an ordinary capture afterwards still works
    assert [s[0] for s in seen] == [0, 1]
    assert all(s[1] == ["pattern", "q"] and s[2] == 0 for s in seen)
    assert seen[0][3] == [(0, len(rows[0])), (0, len(rows[1]))]
    assert cap[1]["blocks.1.attn.pattern"].shape[-1] == len(rows[1])


def test_auto_streams_only_large_batches(tmp_path, tokenizer, monkeypatch):
    model = _tiny("llama")
    calls = []
    original = RunWriter.write_key
    monkeypatch.setattr(RunWriter, "write_key",
                        lambda self, *a: (calls.append(a[0]), original(self, *a))[1])
    _write(model, tokenizer, tmp_path / "small.h5")  # auto: these batches are tiny
    assert calls == []
    monkeypatch.setattr(run_writing, "STREAM_ABOVE_BYTES", 0)
    _write(model, tokenizer, tmp_path / "large.h5", keys=["pattern"])
    assert calls and set(calls) == {"blocks.0.attn.pattern", "blocks.1.attn.pattern"}


def test_a_streamed_batch_cut_short_resumes_to_the_same_content(tmp_path, tokenizer, monkeypatch):
    """A run stopped after some layers of a batch were written (not committed) resumes, and
    reads back as the uninterrupted run."""
    model = _tiny("llama")
    keys = ["pattern", "z"]  # 4 keys a batch of 4 rows
    _write(model, tokenizer, tmp_path / "whole.h5", stream="layer", keys=keys)
    original, calls = RunWriter.write_key, []

    def failing(self, key, source, spans):
        calls.append(key)
        if len(calls) == 7:  # in the second batch, after 2 of its 4 keys
            raise RuntimeError("killed")
        return original(self, key, source, spans)
    monkeypatch.setattr(RunWriter, "write_key", failing)
    with pytest.raises(RuntimeError, match="killed"):
        _write(model, tokenizer, tmp_path / "cut.h5", stream="layer", keys=keys)
    monkeypatch.setattr(RunWriter, "write_key", original)
    with open_run(tmp_path / "cut.h5") as run:
        assert 0 < len(run) < len(TEXTS)
    _write(model, tokenizer, tmp_path / "cut.h5", stream="layer", resume=True, keys=keys)
    with open_run(tmp_path / "whole.h5") as whole, open_run(tmp_path / "cut.h5") as cut:
        assert len(whole) == len(cut) == len(TEXTS)
        for i in range(len(TEXTS)):
            a, b = whole[i], cut[i]
            assert a.tokens == b.tokens
            for key in a:
                assert np.array_equal(a[key], b[key]), key


def test_commit_refuses_a_batch_with_a_missing_key(tmp_path, tokenizer):
    model = _tiny("llama")
    path = tmp_path / "run.h5"
    _write(model, tokenizer, path, keys=["pattern"])
    with h5py.File(path, "r+") as f:
        f["state/complete"][0] = 0
    writer = RunWriter.reopen(path, dtype="float32")
    try:
        from probe.store import BatchRow

        row = BatchRow(99, ["[CLS]", "x", "[SEP]"], [101, 1037, 102], "x", {})
        writer.write_key("blocks.0.attn.pattern", torch.ones(1, 4, 3, 3).tril(), [(0, 3)])  # causal
        with pytest.raises(ProbeError, match="blocks.1.attn.pattern holds"):
            writer.commit([row])
        assert writer.n_done == len(TEXTS)
    finally:
        writer.close()


def test_stream_mode_is_checked(tmp_path, tokenizer):
    with AttentionProbe(_tiny("bert"), tokenizer) as p, \
            pytest.raises(InputError, match="stream must be one of auto, batch, layer"):
        p.run_to_file(TEXTS, tmp_path / "x.h5", stream="layers")


def test_run_files_are_opened_with_a_small_chunk_cache(tmp_path, tokenizer):
    """HDF5 2.0 gives every open dataset an 8 MiB chunk cache; a writer holds every tensor
    dataset open, so probe opens run files with two chunks' worth (store.tensors.CHUNK_CACHE)."""
    from probe.store.files import open_file
    from probe.store.tensors import CHUNK_CACHE

    path = tmp_path / "run.h5"
    model = _tiny("llama")
    with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
        run = p.run_to_file(TEXTS[:2], path)
        run.close()
    with open_file(path) as f:
        assert f.id.get_access_plist().get_cache()[2] == CHUNK_CACHE["rdcc_nbytes"] == 2 << 20
    with h5py.File(path, "r+") as f:
        f["state/complete"][0] = 0
    writer = RunWriter.reopen(path, dtype="float32")
    try:
        assert writer.f.id.get_access_plist().get_cache()[2] == 2 << 20
    finally:
        writer.close()
