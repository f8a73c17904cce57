"""Batch runs to an HDF5 file: validation, a deterministic batch plan, a writer thread, resume.

The plan: input records are read in fixed windows of ``window`` records; inside a window they
are sorted by token length and cut into batches of ``batch_size``. The plan depends only on the
input and these two numbers, so a resumed run recomputes exactly the batches an uninterrupted
run would have (same padding, same numbers, bit for bit) and skips the committed ones.

Memory stays flat: the input is streamed, one window of token ids is held at a time, and at
most ``queue_batches`` captured batches exist at once (the one being written included).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import warnings
from itertools import islice

import numpy as np
import torch

from . import names
from .errors import InputError, ProbeError, ProbeWarning
from .inputs import batches_by_length, encode, max_length_of
from .store import (FILE_README, RESUME_MUST_MATCH, BatchRow, RunWriter, WriteFailedError,
                    check_dtype, check_schema, committed_on_disk, compression_args, open_file,
                    open_run, read_attr, utc_now, write_failed)
from .store.layout import differing_settings, head_map_attr, heads_attr


class Interrupted(ProbeError):
    """A capture stopped on SIGINT or SIGTERM at a batch boundary; the file is resumable."""

    def __init__(self, path, committed: int, signum: int):
        super().__init__(f"interrupted; committed {committed} examples; rerun with --resume")
        self.path, self.committed, self.signum = os.fspath(path), committed, signum


#: graceful stop: while a capture writes, a signal handler (the CLI's) calls :func:`request_stop`
#: and the capture stops before its next batch, so no signal lands inside an HDF5 write
_STOP = {"active": 0, "signum": None}


def request_stop(signum: int) -> bool:
    """Ask a running :func:`capture_to_file` to stop at its next batch boundary. Returns False
    when no capture is writing (the caller should then stop the program its own way)."""
    if not _STOP["active"]:
        return False
    _STOP["signum"] = signum
    return True


def _check_stop(out, writer) -> None:
    if _STOP["signum"] is not None:
        raise Interrupted(out, writer.n_done, _STOP["signum"])


def _windows(records, window):
    it = iter(records)
    while True:
        chunk = list(islice(it, window))
        if not chunk:
            return
        yield chunk


def validate_input(probe, make_records, *, truncate: bool, window: int):
    """One streaming pass over the input: every error found before anything is written.

    Returns ``(n_examples, sha256 of the texts and metadata, typical sizes)``, the last the
    mean number of tokens and of tokens squared per example (what chunks are sized by).
    """
    digest = hashlib.sha256()
    n, tokens, squares = 0, 0, 0
    max_len = max_length_of(probe.model, probe.tokenizer)
    for chunk in _windows(make_records(), window):
        enc = encode(probe.tokenizer, [r.text for r in chunk], max_length=max_len,
                     truncate=truncate, ids=[_name(r) for r in chunk])
        tokens += sum(len(x) for x in enc.ids)
        squares += sum(len(x) ** 2 for x in enc.ids)
        for r in chunk:
            digest.update(r.text.encode("utf-8"))
            digest.update(b"\0")
            digest.update(json.dumps(r.meta, sort_keys=True, default=str).encode("utf-8"))
            digest.update(b"\n")
        n += len(chunk)
    if n == 0:
        raise InputError("the input holds no texts")
    return n, digest.hexdigest(), (tokens / n, squares / n)


def _name(record) -> str:
    rid = record.meta.get("id")
    where = f"line {record.line}" if record.line else f"#{record.index}"
    return f"{rid!r} ({where})" if rid is not None else where


def provenance(probe) -> dict:
    """Model, tokenizer and library facts recorded in every run file."""
    import transformers

    from . import __version__
    from .models import model_fingerprint

    model = probe.model
    fingerprint, method = model_fingerprint(model)
    config = model.config
    return {
        "model": str(getattr(config, "_name_or_path", "") or type(model).__name__),
        "model_class": type(model).__name__,
        "model_type": str(config.model_type),
        "model_config": config.to_json_string(use_diff=False),
        "model_fingerprint": fingerprint,
        "model_fingerprint_method": method,
        "tokenizer": str(getattr(probe.tokenizer, "name_or_path", "")),
        "tokenizer_class": type(probe.tokenizer).__name__,
        "special_tokens": sorted(str(t) for t in getattr(probe.tokenizer, "all_special_tokens", [])),
        "probe_version": __version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "h5py_version": __import__("h5py").__version__,
        "attn_implementation": str(probe.original_attn_implementation),
        "capture_implementation": "probe eager (probe_capture backend)",
        "model_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "created": utc_now(),
    }


def _check_resume(f, wanted: dict, path) -> None:
    """Refuse to resume a file written with other settings (see
    :data:`probe.store.layout.IDENTITY`)."""
    have = {name: read_attr(f.attrs.get(name)) for name in RESUME_MUST_MATCH}
    diffs = [f"{name}: file has {_short(have[name])}, this run has {_short(wanted.get(name))}"
             for name in differing_settings(have, wanted, RESUME_MUST_MATCH)]
    if diffs:
        raise InputError(f"cannot resume {path}: settings differ ({'; '.join(diffs)}). Resume "
                         "with the same settings, or write to a new file")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:60] + "...]"


#: ``stream="auto"`` streams layer by layer a batch whose captured tensors would exceed this
STREAM_ABOVE_BYTES = 256 << 20
STREAM_MODES = ("auto", "batch", "layer")


def streams_layers(stream: str, writer: RunWriter, n_rows: int, width: int) -> bool:
    """Whether a batch of ``n_rows`` rows padded to ``width`` tokens is written layer by layer
    (see :func:`capture_to_file`'s ``stream``); float32 in memory is assumed."""
    if stream != "auto":
        return stream == "layer"
    return writer.values_per_batch(n_rows, width) * 4 > STREAM_ABOVE_BYTES


class _Writer(threading.Thread):
    """Writes captured batches in the background so packing and disk I/O overlap the next
    forward pass.

    At most ``depth`` batches exist at once, counted from before their forward pass until
    they are written (:meth:`reserve` takes a slot, the writer frees it). Bounding the batches
    in flight, not the queue, is what keeps memory flat in N: with a bounded queue, a run that
    outpaces the disk (a long run, once the page cache is full of dirty pages) held the queue
    full, one batch in the writer and one more blocked in ``put``: two batches more than a
    short run, whose writer keeps up (benchmarks/memory.py).
    """

    def __init__(self, writer: RunWriter, depth: int):
        super().__init__(name="probe-writer", daemon=True)
        self.writer = writer
        self.queue: queue.Queue = queue.Queue()
        self.slots = threading.Semaphore(max(int(depth), 1))
        self.error: BaseException | None = None

    def run(self):
        # one intra-op thread here (the setting is per thread): a second full OpenMP team
        # would oversubscribe the cores the forward pass is using
        torch.set_num_threads(1)
        while True:
            item = self.queue.get()
            if item is None:
                return
            try:
                if self.error is None:
                    rows, batch = item
                    # packing (one cast-and-gather copy per row and key, by torch, which
                    # releases the GIL) runs here, in parallel with the next forward pass
                    self.writer.append(rows, batch)
            except BaseException as err:  # surfaced in the main thread
                self.error = err
            finally:
                item = rows = batch = None  # the batch's arrays go before its slot does
                self.slots.release()
                self.queue.task_done()

    def reserve(self):
        """Wait for a free slot before the next forward pass (see the class docstring)."""
        while not self.slots.acquire(timeout=0.5):
            if self.error is not None or not self.is_alive():
                break
        if self.error is not None:
            raise self.error

    def put(self, rows):
        if self.error is not None:
            raise self.error
        self.queue.put(rows)

    def wait(self):
        """Return once every queued batch is written (raises the writer's error, if any)."""
        self.queue.join()
        if self.error is not None:
            raise self.error

    def stop(self):
        self.queue.put(None)
        self.join()
        if self.error is not None:
            raise self.error


def parse_shard(shard) -> tuple[int, int]:
    """``"K/N"``, ``(K, N)`` or ``"auto"`` (from the launcher's environment, see
    :mod:`probe.launch`) -> ``(K, N)`` with 0 <= K < N.

    >>> parse_shard("1/4")
    (1, 4)
    """
    if shard is None:
        return 0, 1
    if shard == "auto":
        from .launch import shard_from_env

        launch = shard_from_env()
        return launch.rank, launch.world_size
    try:
        k, n = (shard.split("/") if isinstance(shard, str) else shard)
        k, n = int(k), int(n)
    except (ValueError, TypeError):
        raise InputError(f"shard {shard!r}: expected K/N, e.g. 0/4") from None
    if not 0 <= k < n:
        raise InputError(f"shard {shard!r}: K must be in 0..N-1")
    return k, n


def make_parent(path) -> None:
    """Create the folder that will hold ``path``, or say clearly why it cannot be."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the folder {parent} for {path}: {err.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise InputError(f"the folder {parent} is not writable; choose another output path")


def capture_to_file(probe, make_records, out, *, batch_size: int = 32, dtype: str = "float32",
                    compression: str | None = None, resume: bool = False, truncate: bool = False,
                    window: int = 2048, progress: bool = False, input_name: str | None = None,
                    queue_batches: int = 2, shard=None, stream: str = "auto"):
    """Capture every record of ``make_records()`` into the run file ``out``; returns the Run.

    ``make_records`` is a zero-argument callable returning a fresh iterator of
    :class:`~probe.readers.Record` (the input is read twice: once to validate, once to run).
    ``shard="K/N"`` captures only input windows w with w % N == K: N processes with
    K = 0..N-1 cover the input with exactly the batches of an unsharded run, and
    :func:`probe.store.combine` joins their files.

    ``stream``: ``"batch"`` captures a whole batch, then a writer thread writes it while the
    next batch runs (fast; memory holds every captured layer of up to ``queue_batches``
    batches); ``"layer"`` writes each layer's tensors as soon as the layer is computed,
    inside the forward pass (memory holds one layer: long sequences, big models);
    ``"auto"`` (default) streams the batches whose captured tensors would exceed
    :data:`STREAM_ABOVE_BYTES`. The file is the same either way.
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
    if getattr(probe, "heads", None):  # absent when every head is kept (as in older runs)
        settings["heads"] = heads_attr(probe.heads)

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
            _check_resume(f, {**settings, **prov}, out)
            if bool(f["state/complete"][0]):
                return open_run(out)
        writer = RunWriter.reopen(out, dtype=dtype)
    else:
        attrs = {**provenance(probe), **settings}
        attrs["readme"] = FILE_README
        sizes, head_map = _key_sizes(probe, next(iter(make_records())).text, stored)
        attrs["head_map"] = head_map_attr(head_map)
        writer = RunWriter.create(out, attrs, sizes, dtype=dtype, compression=compression,
                                  n_examples=n_examples, typical=typical)

    done = np.zeros(n_examples, bool)
    done[writer.done_examples()] = True
    mine = np.zeros(n_examples, bool)
    for w in range(shard_k, -(-n_examples // window), shard_n):
        mine[w * window:(w + 1) * window] = True
    if not mine.any():
        warnings.warn(f"shard {shard_k}/{shard_n} of {out} holds no example: the input's "
                      f"{n_examples} examples make {-(-n_examples // window)} window(s) of "
                      f"{window}; use fewer shards or a smaller --window", ProbeWarning, stacklevel=2)
    bar = _progress(progress, int(mine.sum()), int((done & mine).sum()))
    background = _Writer(writer, queue_batches)
    background.start()
    max_len = max_length_of(probe.model, probe.tokenizer)
    failure = None
    try:
        start = 0
        for number, chunk in enumerate(_windows(make_records(), window)):
            n_chunk = len(chunk)
            if number % shard_n != shard_k or done[start:start + n_chunk].all():
                start += n_chunk
                continue
            enc = encode(probe.tokenizer, [r.text for r in chunk], max_length=max_len,
                         truncate=truncate)
            for rows in batches_by_length([len(x) for x in enc.ids], batch_size):
                state = done[[start + j for j in rows]]
                if state.all():
                    continue
                if state.any():
                    raise ProbeError(f"{out} holds part of a batch; the file was not written "
                                     "by this batch plan. Write to a new file")
                _check_stop(out, writer)
                ids = [enc.ids[j] for j in rows]
                if streams_layers(stream, writer, len(ids), max(len(x) for x in ids)):
                    background.wait()  # earlier batches first: rows stay in batch order
                    probe.stream_ids(ids, lambda layer, got, spans: [
                        writer.write_key(names.key(layer, c), t, spans) for c, t in got.items()])
                    writer.commit(_batch_rows(chunk, rows, start, enc, [
                        (probe.tokenizer.convert_ids_to_tokens(x), x) for x in ids]))
                else:
                    background.reserve()
                    capture = probe.capture_ids(ids)
                    background.put((_batch_rows(chunk, rows, start, enc, [
                        (ex.tokens, ex.input_ids) for ex in capture]), capture.batch))
                    capture = None  # the writer holds the only reference now: see _Writer
                bar.update(len(rows))
            start += n_chunk
        background.stop()
        writer.finish()
    except Interrupted:
        _drain(background)  # batches already captured are committed
        raise Interrupted(out, writer.n_done, _STOP["signum"]) from None
    except WriteFailedError as err:
        failure = err
    finally:
        _drain(background)
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


def _drain(background) -> None:
    """Let the writer thread write what is queued, then stop it (errors are kept on it)."""
    if background.is_alive():
        try:
            background.stop()
        except BaseException:
            pass


def probe_fingerprint(probe) -> str:
    from .models import model_fingerprint

    return model_fingerprint(probe.model)[0]


def _key_sizes(probe, text, stored):
    """Fixed sizes of every stored tensor's axes (0 for token axes), from one forward."""
    ids = probe.tokenizer([text])["input_ids"][0][:8]
    capture = probe.capture_ids([ids])
    ex = capture[0]
    head_map = {layer: ex.head_map[layer] for layer in sorted({names.parse_key(k)[0] for k in stored})}
    sizes = {}
    for key in stored:
        _, component = names.parse_key(key)
        shape = ex._get(key).shape
        sizes[key] = [0 if axis in names.SEQUENCE_AXES else int(s)
                      for axis, s in zip(names.AXES[component], shape)]
    return sizes, head_map


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
