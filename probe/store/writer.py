"""Writing run files: :class:`RunWriter` creates or reopens a run and appends batches of
:class:`BatchRow`, each batch committed atomically; a write the OS refuses (a full disk)
leaves every committed row intact and raises :class:`~probe.store.errors.WriteFailedError`.

One job: put rows into the layout of :mod:`probe.store.layout`. Imports ``layout`` (what to
write), ``files`` (opening, publishing, the writer lock) and ``errors``; never the reader.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import Sequence

import h5py
import numpy as np

from .. import names
from ..errors import InputError, ProbeError, ProbeWarning
from ..lock import WriterLock
from .errors import (WriteFailedError, close_after_failure, close_or_detach, detach,
                     is_write_failure, quiet_failed_closes, write_failed)
from .files import (acquire_lock, check_contents, check_schema, committed_on_disk,
                    create_streams, create_tensor, extend, open_file, publish)
from .layout import (BYTE_STREAMS, INDEX_FIELDS, SCHEMA, SCHEMA_VERSION, STATE, STREAMS,
                     committed_extent, dataset_path, stored_keys)
from .tensors import (CHUNK_CACHE, DTYPES, UNITS, above_diagonal, check_dtype, tensor_attrs,
                      unit_of)
from .attrs import to_attr
from .packing import BatchRow, Packer, encode_rows
from .salvage import intact_rows
from .triangles import units_of_rows

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
        self.n_done = int(f["state/n_done"][0])
        self.stored_keys = sorted(stored_keys(f))
        self.extent = committed_extent(f, self.n_done)  # where the next row goes, per unit/stream
        # handles and attributes looked up once: h5py lookups cost more than small writes
        self._ds = {name: f[name] for name in [*STREAMS, "state/n_done"]}
        self._key_ds = {}  # key -> (dataset, unit, per_unit)
        above = {}  # triangle keys -> the value above their diagonal
        for key in self.stored_keys:
            ds = f[dataset_path(key)]
            self._key_ds[key] = (ds, *tensor_attrs(ds)[:2])
            if self._key_ds[key][1] == "triangle":
                above[key] = above_diagonal(ds)
        self._packer = Packer(dtype, above)

    @classmethod
    def create(cls, path, attrs: dict, key_specs: dict, *, dtype: str, compression: str | None,
               n_examples: int = 1 << 20, typical=None, triangles=()):
        """New file with every dataset created up front (SWMR allows no new objects later).

        ``key_specs`` maps stored keys to their fixed sizes per axis (0 for the token axes);
        chunks are sized from ``n_examples`` and ``typical``, the mean tokens and tokens
        squared per example (see :func:`~probe.store.tensors.tensor_options`).
        ``triangles``: scores and pattern keys of causal layers, stored as packed lower
        triangles (unit "triangle"; every write checks that nothing lies above a diagonal).
        The file is built under a temporary name and linked into place once in SWMR mode, so
        a crash during creation never leaves a half-made run at ``path``.
        """
        check_dtype(dtype)
        with quiet_failed_closes():
            f, lock = _create_file(os.fspath(path), attrs, key_specs, dtype=dtype,
                                   compression=compression, n_examples=n_examples,
                                   typical=typical, triangles=triangles)
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
            _give_up_torn_rows(f, path)
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
        :class:`Packer` for how a batch is packed.
        """
        self._check_usable()
        with self._refused_writes():
            n, streams = encode_rows(rows, self.extent)
            for key in self.stored_keys:
                ds, unit, per_unit = self._key_ds[key]
                extend(ds, self._packer.pack(key, packed, n, unit, per_unit))
            self._commit(rows, n, streams)

    def write_key(self, key: str, source, spans) -> None:
        """Append one key of the batch being written, before :meth:`commit` (layer streaming).

        ``source`` is the key's padded torch tensor ``[batch, ...]`` (any device) and
        ``spans`` each row's ``(start, stop)``; its rows are cut, cast and appended in pieces
        of at most :data:`~probe.store.packing.PIECE_VALUES` values, so writing holds no copy of the tensor (the
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
            want = (self.extent[unit] + units_of_rows(unit, n)) * per_unit
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
        for unit in UNITS:
            self.extent[unit] += units_of_rows(unit, n)
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


def _create_file(final: str, attrs: dict, key_specs: dict, **options):
    """``(file, lock)`` of a new run at ``final``: built at a temporary name, put in SWMR mode,
    then linked into place; on failure nothing is left and the lock is released."""
    tmp = f"{final}.creating-{os.getpid()}"
    lock = acquire_lock(final, committed=0)
    f = None
    try:
        f = h5py.File(tmp, "w-", libver="latest", **CHUNK_CACHE)
        _fill_new(f, attrs, key_specs, **options)
        f.flush()
        f.swmr_mode = True
        publish(tmp, final)
    except BaseException as err:
        if _abandon(f, lock, err, tmp):
            raise write_failed(err, final, 0) from None
        raise
    return f, lock


def _give_up_torn_rows(f: h5py.File, path) -> None:
    """Move the commit counter back before committed rows a kill left unreadable (see
    :mod:`~probe.store.salvage`); the resume captures them again."""
    n_done = int(f["state/n_done"][0])
    tensors = [(dataset_path(key), *tensor_attrs(f[dataset_path(key)])[:2])
               for key in stored_keys(f)]
    kept, damaged = intact_rows(f, n_done, tensors)
    if kept < n_done:
        f["state/n_done"][0] = kept
        f.flush()
        warnings.warn(f"{path}: the interrupted write left {', '.join(damaged)} unreadable "
                      f"(a chunk fails its checksum); {n_done - kept} committed example(s) "
                      "are dropped and captured again", ProbeWarning, stacklevel=3)


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
              compression: str | None, n_examples: int, typical=None,
              triangles=()) -> None:
    """Every attribute and (empty) dataset of a new run, as :mod:`~probe.store.layout` says."""
    triangles = sorted(triangles)
    for key in triangles:
        if key not in key_specs or unit_of(names.parse_key(key)[1]) != "square":
            raise InputError(f"{key} cannot be stored as a triangle: only stored [head, query, "
                             "key] keys (scores, pattern) can")
    for k, v in attrs.items():
        f.attrs[k] = to_attr(v)
    if triangles:  # absent when nothing is packed (as in version 1 files)
        f.attrs["triangle_keys"] = to_attr(triangles)
    f.attrs["run_id"] = uuid.uuid4().hex  # what a combined run checks its shards by
    f.attrs["schema"] = SCHEMA
    f.attrs["schema_version"] = SCHEMA_VERSION
    for name, kind in STATE.items():
        f.create_dataset(name, data=np.zeros(1, kind))
    create_streams(f)
    for key, sizes in key_specs.items():
        _, component = names.parse_key(key)
        create_tensor(f, key, sizes, unit=unit_of(component, triangle=key in triangles),
                      dtype=dtype, compression=compression, n_examples=n_examples,
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
