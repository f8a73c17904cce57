"""The writer's packing: one cast-and-gather copy per key into a reused buffer, equal to
cutting every example out of the padded batch and concatenating (the reference)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from probe import names
from probe.captures import CapturedBatch
from probe.packing import unpad_index
from probe.store import BatchRow, RunWriter, dataset_path


def _batch(spans, width, seed=0):
    rng = np.random.default_rng(seed)
    b = len(spans)
    arrays = {
        "blocks.0.attn.pattern": rng.random((b, 3, width, width), np.float32),
        "blocks.0.attn.q": rng.standard_normal((b, 3, width, 4), np.float32),
        "blocks.1.attn.value_norm": rng.random((b, 3, width), np.float32),
    }
    tokens = [[f"t{j}" for j in range(a, e)] for a, e in spans]
    return CapturedBatch(arrays, spans, tokens)


def _reference(batch, key, dtype):
    _, component = names.parse_key(key)
    parts = [batch.arrays[key][row][unpad_index(component, a, b)].reshape(-1)
             for row, (a, b) in enumerate(batch.spans)]
    return np.concatenate(parts).astype(dtype)


SPANS = {"right padding": [(0, 5), (0, 2), (0, 7), (0, 1)],
         "left padding": [(2, 7), (5, 7), (0, 7), (6, 7)]}


@pytest.mark.parametrize("spans", SPANS.values(), ids=SPANS.keys())
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_packed_equals_per_example_concatenation(spans, dtype):
    batch = _batch(spans, 7)
    for key in batch.arrays:
        want = _reference(batch, key, dtype)
        got = batch.packed(key, dtype)
        assert got.dtype == dtype and batch.packed_size(key) == want.size
        np.testing.assert_array_equal(got, want, err_msg=key)
        # into a larger reused buffer: only its head is written and returned
        buf = np.full(want.size + 10, -1, dtype)
        view = batch.packed(key, dtype, out=buf)
        assert np.shares_memory(view, buf) and view.size == want.size
        np.testing.assert_array_equal(view, want)
        assert (buf[want.size:] == -1).all()


def test_packed_refuses_a_wrong_buffer():
    batch = _batch(SPANS["right padding"], 7)
    key = "blocks.0.attn.pattern"
    with pytest.raises(ValueError, match="at least"):
        batch.packed(key, np.float32, out=np.empty(batch.packed_size(key) - 1, np.float32))
    with pytest.raises(ValueError, match="float16"):
        batch.packed(key, np.float16, out=np.empty(batch.packed_size(key), np.float32))


def _rows(batch, first_index):
    return [BatchRow(index=first_index + i, tokens=batch.tokens[i],
                     input_ids=np.arange(len(batch.tokens[i])), text=f"text {first_index + i}",
                     meta={"id": first_index + i}) for i in range(len(batch))]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_append_from_a_batch_equals_append_of_packed_arrays(tmp_path, dtype):
    """The reused buffer must not leak one key's or batch's values into the next, whatever the
    sizes (the second batch is larger than the first, so the buffer grows; the third smaller)."""
    batches = [_batch(SPANS["right padding"], 7, seed=1), _batch([(0, 9)] * 5, 9, seed=2),
               _batch(SPANS["left padding"], 7, seed=3)]
    sizes = {"blocks.0.attn.pattern": [3, 0, 0], "blocks.0.attn.q": [3, 0, 4],
             "blocks.1.attn.value_norm": [3, 0]}
    attrs = {"keys": list(sizes), "stored_keys": list(sizes)}
    files = {}
    for how in ("batch", "dict"):
        path = tmp_path / f"{how}.h5"
        writer = RunWriter.create(path, attrs, sizes, dtype=dtype, compression=None)
        try:
            at = 0
            for batch in batches:
                packed = batch if how == "batch" else {
                    k: batch.packed(k, np.dtype(dtype)) for k in sizes}
                writer.append(_rows(batch, at), packed)
                at += len(batch)
            writer.finish()
        finally:
            writer.close()
        files[how] = path
    with h5py.File(files["batch"], "r") as a, h5py.File(files["dict"], "r") as b:
        for key in sizes:
            want = np.concatenate([_reference(x, key, dtype) for x in batches])
            np.testing.assert_array_equal(a[dataset_path(key)][:], want)
            np.testing.assert_array_equal(b[dataset_path(key)][:], want)
        assert a["state/n_done"][0] == sum(len(x) for x in batches)


@pytest.mark.parametrize("depth", [1, 2])
def test_batches_in_flight_are_bounded_with_a_slow_writer(minilm, tmp_path, monkeypatch, depth):
    """Memory flat in N: however far the forward passes outrun the writer, at most
    ``queue_batches`` captured batches exist at once (the one being written included)."""
    import threading
    import time
    import weakref

    from conftest import SENTENCES
    from probe import AttentionProbe, captures

    live = weakref.WeakSet()
    init = captures.CapturedBatch.__init__

    def tracked(self, *a, **k):
        init(self, *a, **k)
        live.add(self)

    append = RunWriter.append
    seen = []

    def slow_append(self, rows, packed):
        if not seen:  # a stalled disk: wait until the forward passes can get no further ahead
            last, since = len(live), time.monotonic()
            while time.monotonic() - since < 1.5:
                time.sleep(0.05)
                if len(live) != last:
                    last, since = len(live), time.monotonic()
        seen.append(len(live))
        return append(self, rows, packed)

    monkeypatch.setattr(captures.CapturedBatch, "__init__", tracked)
    monkeypatch.setattr(RunWriter, "append", slow_append)
    peak = [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], len(live))
            time.sleep(0.002)

    model, tokenizer = minilm
    texts = (SENTENCES * 2)[:8]
    with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            run = p.run_to_file(texts, tmp_path / "run.h5", batch_size=1, queue_batches=depth)
        finally:
            stop.set()
            watcher.join()
    with run:
        assert len(run) == len(texts) and run.complete
    assert len(seen) == len(texts)
    assert max(seen) <= depth and peak[0] <= depth, (seen, peak)
