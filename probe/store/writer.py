"""Writing run files: :class:`RunWriter` creates or reopens a run and appends batches of
:class:`BatchRow`, each batch committed atomically; a write the OS refuses (a full disk)
leaves every committed row intact and raises :class:`~probe.store.errors.WriteFailedError`.

One job: put rows into the layout of :mod:`probe.store.layout`. Imports ``layout`` (what to
write), ``files`` (opening, publishing, the writer lock) and ``errors``; never the reader.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import h5py
import numpy as np

from .. import names
from ..captures import CapturedBatch, pack_pieces, packed_size
from ..errors import ProbeError
from ..lock import WriterLock
from .errors import (WriteFailedError, close_after_failure, close_or_detach, detach,
                     is_write_failure, quiet_failed_closes, write_failed)
from .files import (acquire_lock, check_contents, check_schema, committed_on_disk,
                    create_streams, create_tensor, extend, open_file, publish)
from .layout import (BYTE_STREAMS, DTYPES, INDEX_FIELDS, SCHEMA, SCHEMA_VERSION, STATE, STREAMS,
                     check_dtype, committed_extent, dataset_path, stored_keys, tensor_attrs,
                     to_attr)

#: the most values :meth:`RunWriter.write_key` packs at once (8 MiB in float16)
PIECE_VALUES = 1 << 22


@dataclass(frozen=True)
class BatchRow:
    """One example of a batch as a run stores it.

    ``index``: its position in the input; ``tokens``: its token strings; ``input_ids``: their
    ids (as many as ``tokens``); ``text``: the input text; ``meta``: a JSON-serialisable dict
    (id and the other input fields).

    >>> BatchRow(0, ["[CLS]", "hi"], [101, 7632], "hi", {"id": "a"}).n_tokens
    2
    """

    index: int
    tokens: Sequence[str]
    input_ids: Sequence[int]
    text: str
    meta: dict

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


class RunWriter:
    """Append batches of examples to a run file; each batch is committed atomically.

    Commit protocol: write every dataset of the batch, flush, then advance
    ``/state/n_done`` and flush again. The file is in SWMR mode, whose ordered metadata writes
    keep it consistent on disk, so after a crash every row below ``n_done`` is intact.
    """

    def __init__(self, f: h5py.File, dtype: str, lock: WriterLock | None = None, path=None):
        self.f = f
        self.path = os.fspath(path) if path is not None else f.filename  # the run's final name
        self.lock = lock  # held from creation or reopening until close()
        self.failed: BaseException | None = None  # a write the OS refused; see _fail
        self.dtype = DTYPES[dtype]
        self._packer = _Packer(dtype)
        self.n_done = int(f["state/n_done"][0])
        self.stored_keys = sorted(stored_keys(f))
        self.extent = committed_extent(f, self.n_done)  # where the next row goes, per stream
        # handles and attributes looked up once: h5py lookups cost more than small writes
        self._ds = {name: f[name] for name in [*STREAMS, "state/n_done"]}
        self._key_ds = {}
        for key in self.stored_keys:
            ds = f[dataset_path(key)]
            self._key_ds[key] = (ds, *tensor_attrs(ds)[:2])

    @classmethod
    def create(cls, path, attrs: dict, key_specs: dict, *, dtype: str, compression: str | None,
               n_examples: int = 1 << 20, typical=None):
        """New file with every dataset created up front (SWMR allows no new objects later).

        ``key_specs`` maps stored keys to their fixed sizes per axis (0 for the token axes);
        chunks are sized from ``n_examples`` and ``typical``, the mean tokens and tokens
        squared per example (see :func:`~probe.store.layout.tensor_options`).
        The file is built under a temporary name and linked into place once in SWMR mode, so
        a crash during creation never leaves a half-made run at ``path``.
        """
        check_dtype(dtype)
        with quiet_failed_closes():
            f, lock = _create_file(os.fspath(path), attrs, key_specs, dtype=dtype,
                                   compression=compression, n_examples=n_examples,
                                   typical=typical)
            return cls(f, dtype, lock, path=os.fspath(path))

    @classmethod
    def reopen(cls, path, *, dtype: str):
        """Reopen an unfinished run for appending; rows past the last commit are dropped."""
        lock = acquire_lock(path, committed=None)  # before anything touches the file
        f = None
        try:
            f = open_file(path, writable=True)
            check_schema(f, path)
            check_contents(f, path)
            writer = cls(f, dtype, lock, path=path)
            _truncate(f, writer.n_done, writer.extent, writer._key_ds.values())
            f.flush()
            if not f.swmr_mode:
                f.swmr_mode = True
        except BaseException as err:
            if _abandon(f, lock, err):
                raise write_failed(err, path, committed_on_disk(path)) from None
            raise
        return writer

    def values_per_batch(self, n_rows: int, width: int) -> int:
        """Values of every stored key for ``n_rows`` rows padded to ``width`` tokens (what a
        captured batch holds in memory before it is written)."""
        return sum(per_unit * n_rows * (width if unit == "token" else width * width)
                   for _, unit, per_unit in self._key_ds.values())

    def done_examples(self) -> np.ndarray:
        """Input indices of the committed rows."""
        return self.f["index/example"][: self.n_done]

    def append(self, rows: Sequence[BatchRow], packed) -> None:
        """Write and commit one batch of :class:`BatchRow`.

        ``packed`` is the batch's :class:`~probe.captures.CapturedBatch` (rows in the same
        order), or a mapping ``key -> the rows' arrays of that key flattened and concatenated
        in row order`` (what :meth:`~probe.captures.CapturedBatch.packed` returns); see
        :class:`_Packer` for how a batch is packed.
        """
        self._check_usable()
        with self._refused_writes():
            n, streams = encode_rows(rows, self.extent)
            for key in self.stored_keys:
                ds, unit, per_unit = self._key_ds[key]
                extend(ds, self._packer.pack(key, packed, _units(unit, n) * per_unit))
            self._commit(rows, n, streams)

    def write_key(self, key: str, source, spans) -> None:
        """Append one key of the batch being written, before :meth:`commit` (layer streaming).

        ``source`` is the key's padded torch tensor ``[batch, ...]`` (any device) and
        ``spans`` each row's ``(start, stop)``; its rows are cut, cast and appended in pieces
        of at most :data:`PIECE_VALUES` values, so writing holds no copy of the tensor (the
        point of streaming long sequences). Nothing counts until :meth:`commit`:
        after a crash the partial batch is dropped on resume, like any uncommitted row.
        """
        self._check_usable()
        if key not in self._key_ds:
            raise ProbeError(f"{key} is not stored in {self.path}")
        ds = self._key_ds[key][0]
        with self._refused_writes():
            for piece in self._packer.pieces(key, source, spans):
                extend(ds, piece)

    def commit(self, rows: Sequence[BatchRow]) -> None:
        """Commit a batch whose every key was appended by :meth:`write_key`; a key missing
        or of the wrong size is an error (nothing is committed)."""
        self._check_usable()
        n, streams = encode_rows(rows, self.extent)
        for key in self.stored_keys:
            ds, unit, per_unit = self._key_ds[key]
            want = (self.extent[unit] + _units(unit, n)) * per_unit
            if ds.shape[0] != want:
                raise ProbeError(f"{self.path}: {key} holds {ds.shape[0]} values where this "
                                 f"batch's commit needs {want}; the batch is not committed")
        with self._refused_writes():
            self._commit(rows, n, streams)

    def _commit(self, rows, n, streams) -> None:
        """Append the rows' index and byte streams (:func:`encode_rows`), then advance the
        committed count."""
        for name, data in streams.items():
            extend(self._ds[name], data)
        self.f.flush()
        # commit: only now does the batch count (the counter moves once the commit is on disk)
        self._ds["state/n_done"][0] = self.n_done + len(rows)
        self.f.flush()
        self.n_done += len(rows)
        for unit in ("token", "square"):
            self.extent[unit] += _units(unit, n)
        for name in BYTE_STREAMS:
            self.extent[name] += streams[name].shape[0]

    def _check_usable(self) -> None:
        if self.failed is not None:
            raise ProbeError(f"{self.path}: an earlier write failed; close this writer and "
                             "resume the run")

    @contextlib.contextmanager
    def _refused_writes(self):
        """Turn a write the OS refuses into :meth:`_fail`'s error; other errors pass."""
        try:
            yield
        except (OSError, RuntimeError) as err:
            if not is_write_failure(err):
                raise
            raise self._fail(err) from None

    def _fail(self, err: BaseException) -> WriteFailedError:
        """Remember a write the OS refused, detach the file (see
        :func:`~probe.store.errors.detach`) and return the error to raise. The row count on
        disk is read back after close (a failed commit flush may or may not have landed)."""
        self.failed = err
        detach(self.f)
        return write_failed(err, self.path, self.n_done)

    def finish(self) -> None:
        with self._refused_writes():
            self.f["state/complete"][0] = 1
            self.f.flush()

    def close(self) -> None:
        try:
            if self.failed is not None:
                close_after_failure(self.f)
            elif self.f.id.valid:
                try:
                    self.f.close()
                except (OSError, RuntimeError) as err:  # the closing flush hit a full disk
                    if not is_write_failure(err):
                        raise
                    self._fail(err)
                    close_after_failure(self.f)
                    raise write_failed(err, self.path, committed_on_disk(self.path)) from None
        finally:
            if self.lock is not None:
                self.lock.release()


class _Packer:
    """One copy per key and batch: each key of a :class:`~probe.captures.CapturedBatch` is
    packed (cast and unpadded) into a buffer reused for every key and batch, and that buffer
    is what HDF5 writes from, so a batch allocates nothing."""

    def __init__(self, dtype: str):
        self.name = dtype  # "float32", "float16" or "bfloat16" (stored as uint16 bit patterns)
        self.dtype = DTYPES[dtype]
        self._buffer: np.ndarray | None = None
        self._piece_buffer: np.ndarray | None = None

    def pack(self, key: str, packed, size: int) -> np.ndarray:
        """The ``size`` values of ``key`` in the writer's dtype, from a batch or a mapping
        (values, or for bfloat16 already their uint16 bit patterns)."""
        if isinstance(packed, CapturedBatch):
            target = self.name if self.name == "bfloat16" else self.dtype
            data = packed.packed(key, target, out=self._scratch(packed.packed_size(key)))
        else:
            data = packed[key]
            if self.name == "bfloat16" and data.dtype != np.uint16:
                data = bfloat16_bits(data)
        if data.shape != (size,):
            raise ProbeError(f"{key}: got {data.shape[0]} values for a batch that needs {size}")
        return data.astype(self.dtype, copy=False)

    def pieces(self, key: str, source, spans):
        """The values of one key's padded torch tensor ``[batch, ...]``, cut to ``spans``, in
        the writer's dtype, as consecutive pieces in a reused buffer of at most
        :data:`PIECE_VALUES` values (:func:`~probe.captures.pack_pieces`)."""
        _, component = names.parse_key(key)
        target = self.name if self.name == "bfloat16" else self.dtype
        size = min(packed_size(component, source.shape, spans), PIECE_VALUES)
        buffer = self._piece_buffer
        if buffer is None or buffer.shape[0] < size:
            buffer = self._piece_buffer = np.empty(PIECE_VALUES, self.dtype)
        return pack_pieces(source, component, spans, target, buffer[:size])

    def _scratch(self, size: int) -> np.ndarray:
        """The reused buffer, grown (by half again, to grow rarely) when too small."""
        buf = self._buffer
        if buf is None or buf.shape[0] < size:
            grown = int(1.5 * buf.shape[0]) if buf is not None else 0
            buf = self._buffer = np.empty(max(size, grown), self.dtype)
        return buf


def _create_file(final: str, attrs: dict, key_specs: dict, **options):
    """``(file, lock)`` of a new run at ``final``: built at a temporary name, put in SWMR mode,
    then linked into place; on failure nothing is left and the lock is released."""
    tmp = f"{final}.creating-{os.getpid()}"
    lock = acquire_lock(final, committed=0)
    f = None
    try:
        f = h5py.File(tmp, "w-", libver="latest")
        _fill_new(f, attrs, key_specs, **options)
        f.flush()
        f.swmr_mode = True
        publish(tmp, final)
    except BaseException as err:
        if _abandon(f, lock, err, tmp):
            raise write_failed(err, final, 0) from None
        raise
    return f, lock


def _truncate(f: h5py.File, n_done: int, extent: dict, tensors) -> None:
    """Drop what lies past the last commit (rows of a batch a killed writer left unfinished).
    ``tensors``: ``(dataset, unit, per_unit)`` of every tensor."""
    ends = {**{f"index/{name}": n_done for name in INDEX_FIELDS},
            **{name: extent[name] for name in BYTE_STREAMS},
            "tokens/input_ids": extent["token"], "tokens/end": extent["token"]}
    for name, end in ends.items():
        f[name].resize((end,))
    for ds, unit, per_unit in tensors:
        ds.resize((extent[unit] * per_unit,))


def _fill_new(f: h5py.File, attrs: dict, key_specs: dict, *, dtype: str,
              compression: str | None, n_examples: int, typical=None) -> None:
    """Every attribute and (empty) dataset of a new run, as :mod:`~probe.store.layout` says."""
    for k, v in attrs.items():
        f.attrs[k] = to_attr(v)
    f.attrs["run_id"] = uuid.uuid4().hex  # what a combined run checks its shards by
    f.attrs["schema"] = SCHEMA
    f.attrs["schema_version"] = SCHEMA_VERSION
    for name, kind in STATE.items():
        f.create_dataset(name, data=np.zeros(1, kind))
    create_streams(f)
    for key, sizes in key_specs.items():
        create_tensor(f, key, sizes, dtype=dtype, compression=compression, n_examples=n_examples,
                      typical=typical)


def _abandon(f, lock: WriterLock, err: BaseException, tmp: str | None = None) -> bool:
    """Undo a create or reopen that ``err`` stopped: close the file (detached after a refused
    write), remove the temporary file, release the lock. Returns whether ``err`` was a
    refused write (the caller raises :func:`~probe.store.errors.write_failed`)."""
    failure = close_or_detach(f, err)
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)
    lock.release()
    return failure


def encode_rows(rows: Sequence[BatchRow], extent: dict) -> tuple[np.ndarray, dict]:
    """The token counts of ``rows`` and what they append to every non-tensor dataset, for
    rows that start where ``extent`` (token and square units, bytes per stream) points."""
    n = np.array([r.n_tokens for r in rows], np.int64)
    texts = [r.text.encode("utf-8") for r in rows]
    metas = [json.dumps(r.meta, ensure_ascii=False, default=str).encode("utf-8") for r in rows]
    token_strings = [t.encode("utf-8") for r in rows for t in r.tokens]
    token_end = extent["tokens/text"] + np.cumsum([len(t) for t in token_strings])
    streams = {
        "tokens/input_ids": np.concatenate([np.asarray(r.input_ids, np.int32) for r in rows]),
        "tokens/end": token_end.astype(np.int64),
        "tokens/text": np.frombuffer(b"".join(token_strings), np.uint8),
        "examples/text": np.frombuffer(b"".join(texts), np.uint8),
        "examples/meta": np.frombuffer(b"".join(metas), np.uint8),
    }
    index = {"example": [r.index for r in rows], "n_tokens": n,
             "token_start": extent["token"] + _starts(n),
             "square_start": extent["square"] + _starts(n * n),
             "text_start": extent["examples/text"] + _starts([len(t) for t in texts]),
             "text_len": [len(t) for t in texts],
             "meta_start": extent["examples/meta"] + _starts([len(m) for m in metas]),
             "meta_len": [len(m) for m in metas]}
    for name in INDEX_FIELDS:
        streams[f"index/{name}"] = np.asarray(index[name], dtype=STREAMS[f"index/{name}"][0])
    return n, streams


def bfloat16_bits(values) -> np.ndarray:
    """uint16 bfloat16 bit patterns of float values, rounded as ``torch.Tensor.to(torch.bfloat16)``
    rounds (to nearest, ties to even; NaN stays NaN).

    >>> bfloat16_bits(np.array([1.0, -3.0], np.float32)).tolist()
    [16256, 49216]
    """
    import torch

    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def _units(unit: str, n: np.ndarray) -> int:
    """Units (tokens, or cells of n_tokens**2) of rows of ``n`` tokens."""
    return int(n.sum()) if unit == "token" else int((n * n).sum())


def _starts(lengths) -> np.ndarray:
    """Where each of consecutive pieces of these lengths starts (0 for the first)."""
    lengths = np.asarray(lengths, np.int64)
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
