"""Batch runs to an HDF5 file: the deterministic batch plan and the loop that captures and
writes it (setup checks are :mod:`probe.run_setup`'s, the writer thread and signals
:mod:`probe.run_writing`'s).

The plan: input records are read in fixed windows of ``window`` records; inside a window they
are sorted by token length and cut into batches of ``batch_size``. The plan depends only on the
input and these two numbers, so a resumed run recomputes exactly the batches an uninterrupted
run would have (same padding, same numbers, bit for bit) and skips the committed ones.

Memory stays flat: the input is streamed, one window of token ids is held at a time, and at
most ``queue_batches`` captured batches exist at once (the one being written included).

Imports numpy, :mod:`probe.names`, :mod:`probe.errors`, :mod:`probe.inputs`,
:mod:`probe.malloc_tuning`, :mod:`probe.run_setup`, :mod:`probe.run_writing`,
:mod:`probe.store` (with :mod:`probe.store.layout`) and :mod:`probe.triangles` (inside
functions, :mod:`probe.readers` and tqdm).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from . import names
from .errors import InputError, ProbeError, ProbeWarning
from .inputs import batches_by_length, encode, max_length_of
from .malloc_tuning import return_large_blocks
from .run_setup import (check_resume, key_sizes, make_parent, parse_shard, probe_fingerprint,
                        provenance, shard_parts, shard_size, validate_input, windows)
from .run_writing import (_STOP, STREAM_MODES, BackgroundWriter, Interrupted, check_stop, drain,
                          request_stop, streams_layers)
from .store import (FILE_README, BatchRow, RunWriter, WriteFailedError, check_dtype,
                    check_schema, committed_on_disk, compression_args, open_file, open_run,
                    write_failed)
from .store.layout import head_map_attr, heads_attr
from .triangles import triangle_keys

__all__ = ["capture_to_file", "texts_to_file", "Interrupted", "parse_shard", "request_stop"]


def texts_to_file(probe, texts, out, *, meta=None, ids=None, **options):
    """:func:`capture_to_file` of in-memory ``texts`` (one string or a list), with optional
    ``meta`` (one dict per text) and ``ids``: what ``AttentionProbe.run_to_file`` does."""
    if probe.tokenizer is None:
        raise InputError("run_to_file() needs a tokenizer: AttentionProbe(model, tokenizer)")
    from .readers import records_from_texts

    texts = [texts] if isinstance(texts, str) else texts
    records = list(records_from_texts(texts, meta, ids))
    return capture_to_file(probe, lambda: iter(records), out, **options)


def capture_to_file(probe, make_records, out, *, batch_size: int = 32, dtype: str = "float32",
                    compression: str | None = None, resume: bool = False, truncate: bool = False,
                    window: int = 2048, progress: bool = False, input_name: str | None = None,
                    queue_batches: int = 2, shard=None, stream: str = "auto",
                    pack_causal: bool = True):
    """Capture every record of ``make_records()`` into the run file ``out``; returns the Run.

    ``make_records`` is a zero-argument callable returning a fresh iterator of
    :class:`~probe.readers.Record` (the input is read twice: once to validate, once to run).
    ``shard="K/N"`` writes only shard K's part of the plan (:func:`~probe.run_setup.shard_parts`:
    the K-th N-th of the examples in plan order, balanced to one example; a batch two shards
    share is computed whole by both): N processes with K = 0..N-1 cover the input with
    exactly the numbers of an unsharded run, and :func:`probe.store.combine` joins their
    files.

    ``stream``: ``"batch"`` captures a whole batch, then a writer thread writes it while the
    next batch runs (fast; memory holds every captured layer of up to ``queue_batches``
    batches); ``"layer"`` writes each layer's tensors as soon as the layer is computed,
    inside the forward pass (memory holds one layer: long sequences, big models);
    ``"auto"`` (default) streams the batches whose captured tensors would exceed
    :data:`STREAM_ABOVE_BYTES`. The file is the same either way.

    ``pack_causal`` (default) stores the scores and pattern of causal layers as packed lower
    triangles (:mod:`probe.triangles`), read back as the same squares; False stores every
    square whole.
    """
    if stream not in STREAM_MODES:
        raise InputError(f"stream must be one of {', '.join(STREAM_MODES)}, got {stream!r}")
    shard_k, shard_n = parse_shard(shard)
    out = os.fspath(out)
    compression_args(compression)  # validate before any work
    check_dtype(dtype)
    for name, value in (("batch_size", batch_size), ("window", window)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a whole number of at least 1, got {value!r}")
    exists = os.path.exists(out)
    if not exists:
        make_parent(out)
    if exists and not resume:
        raise InputError(f"{out} already exists; pass --resume (resume=True) to continue it, or "
                         "choose another output path (probe never overwrites a run)")
    n_examples, input_sha, typical = validate_input(probe, make_records, truncate=truncate,
                                                    window=window)
    stored = list(probe.stored_keys)
    settings = {"keys": list(probe.exposed_keys), "stored_keys": stored, "dtype": dtype,
                "compression": compression or "none", "truncate": truncate,
                "batch_size": batch_size, "window": window, "input_sha256": input_sha,
                "n_examples": n_examples, "input": input_name or "<in-memory texts>",
                "shard": f"{shard_k}/{shard_n}"}
    if shard_n > 1:  # shards split by example (runs sharded otherwise before lack this)
        settings["shard_unit"] = "example"
    if getattr(probe, "heads", None):  # absent when every head is kept (as in older runs)
        settings["heads"] = heads_attr(probe.heads)
    triangles = triangle_keys(probe, stored, pack_causal)
    if triangles:  # absent when nothing is packed (as in older runs)
        settings["triangle_keys"] = triangles

    _STOP["active"] += 1
    try:
        return _capture(probe, make_records, out, exists, settings, n_examples, stored,
                        dtype=dtype, compression=compression, truncate=truncate, window=window,
                        progress=progress, queue_batches=queue_batches, batch_size=batch_size,
                        shard_k=shard_k, shard_n=shard_n, stream=stream, typical=typical)
    finally:
        _STOP["active"] -= 1
        if not _STOP["active"]:
            _STOP["signum"] = None


def _capture(probe, make_records, out, exists, settings, n_examples, stored, *, dtype,
             compression, truncate, window, progress, queue_batches, batch_size, shard_k, shard_n,
             stream, typical):
    if exists:
        with open_file(out) as f:
            check_schema(f, out)
            prov = {"model": f.attrs.get("model"),
                    "model_fingerprint": probe_fingerprint(probe)}
            check_resume(f, {**settings, **prov}, out)
            if bool(f["state/complete"][0]):
                return open_run(out)
        writer = RunWriter.reopen(out, dtype=dtype)
    else:
        attrs = {**provenance(probe), **settings}
        attrs["readme"] = FILE_README
        sizes, head_map = key_sizes(probe, next(iter(make_records())).text, stored)
        attrs["head_map"] = head_map_attr(head_map)
        writer = RunWriter.create(out, attrs, sizes, dtype=dtype, compression=compression,
                                  n_examples=n_examples, typical=typical,
                                  triangles=settings.get("triangle_keys", ()))

    done = np.zeros(n_examples, bool)
    done[writer.done_examples()] = True
    mine = shard_size(n_examples, shard_k, shard_n)
    if not mine:
        warnings.warn(f"shard {shard_k}/{shard_n} of {out} holds no example: the input has "
                      f"{n_examples} example(s) for {shard_n} shards; use fewer shards",
                      ProbeWarning, stacklevel=2)
    bar = _progress(progress, mine, writer.n_done)
    parts = shard_parts(n_examples, window, batch_size, shard_k, shard_n)
    background = BackgroundWriter(writer, queue_batches)
    background.start()
    max_len = max_length_of(probe.model, probe.tokenizer)
    failure = None
    try:
        start = 0
        for chunk, part in zip(windows(make_records(), window), parts):
            n_chunk = len(chunk)
            if not any(part) or done[start:start + n_chunk].all():
                start += n_chunk
                continue
            enc = encode(probe.tokenizer, [r.text for r in chunk], max_length=max_len,
                         truncate=truncate)
            plan = batches_by_length([len(x) for x in enc.ids], batch_size)
            assert len(plan) == len(part), "shard_parts must follow batches_by_length"
            for rows, (a, b) in ((rows, ab) for rows, ab in zip(plan, part) if ab):
                state = done[[start + j for j in rows[a:b]]]
                if state.all():
                    continue
                # rows a:b are this shard's, of which a salvaged resume may hold the first
                k = a + _committed_head(state, out)
                check_stop(out, writer)
                ids = [enc.ids[j] for j in rows]  # the whole batch: same padding, same numbers
                if streams_layers(stream, writer, len(ids), max(len(x) for x in ids)):
                    return_large_blocks()  # flat peak over layers (see probe.malloc_tuning)
                    background.wait()  # earlier batches first: rows stay in batch order
                    probe.stream_ids(ids, lambda layer, got, spans: [
                        writer.write_key(names.key(layer, c), t[k:b], spans[k:b])
                        for c, t in got.items()])
                    writer.commit(_batch_rows(chunk, rows[k:b], start, enc, [
                        (probe.tokenizer.convert_ids_to_tokens(x), x) for x in ids[k:b]]))
                else:
                    background.reserve()
                    capture = probe.capture_ids(ids)
                    background.put((_batch_rows(chunk, rows[k:b], start, enc, [
                        (ex.tokens, ex.input_ids) for ex in capture][k:b]),
                        capture.batch if (k, b) == (0, len(rows)) else capture.batch.rows(k, b)))
                    capture = None  # the writer holds the only reference now: see BackgroundWriter
                bar.update(b - k)
            start += n_chunk
        background.stop()
        writer.finish()
    except Interrupted:
        drain(background)  # batches already captured are committed
        raise Interrupted(out, writer.n_done, _STOP["signum"]) from None
    except WriteFailedError as err:
        failure = err
    finally:
        drain(background)
        try:
            writer.close()
        except WriteFailedError as err:
            failure = failure or err
        bar.close()
    if failure is not None:  # read back what the file holds now that it is closed
        committed = committed_on_disk(out)
        raise write_failed(failure.cause, out,
                           failure.committed if committed is None else committed) from None
    return open_run(out)


def _committed_head(state: np.ndarray, out) -> int:
    """How many of a batch's rows (this shard's, in batch order) the file holds already: 0,
    or the first rows of the last committed batch when a resume gave up rows after them (a
    chunk torn by a kill; see :mod:`probe.store.salvage`). Any other mix means another batch
    plan wrote it."""
    k = int(state.sum())
    if not state[:k].all():
        raise ProbeError(f"{out} holds part of a batch; the file was not written by this "
                         "batch plan. Write to a new file")
    return k


def _batch_rows(chunk, rows, start, enc, tokens_and_ids) -> list[BatchRow]:
    """What the file stores of each row of a batch besides its tensors: rows ``rows`` of the
    input window ``chunk`` (which starts at input index ``start``), with their tokens and ids."""
    batch_rows = []
    for j, (tokens, input_ids) in zip(rows, tokens_and_ids):
        meta = dict(chunk[j].meta)
        if enc.truncated[j]:
            meta["truncated"] = True
        batch_rows.append(BatchRow(index=start + j, tokens=tokens, input_ids=input_ids,
                                   text=chunk[j].text, meta=meta))
    return batch_rows


def _progress(enabled, total, initial):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="ex", desc="capture", smoothing=0.05)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass
