"""Writing run files: :class:`RunWriter` appends batches of :class:`BatchRow` to a run it
created or reopened (:mod:`probe.store.starting`), each batch committed atomically; a write
the OS refuses (a full disk) leaves every committed row intact and raises
:class:`~probe.store.errors.WriteFailedError`.

One job: put rows into the layout of :mod:`probe.store.layout`. Imports h5py, numpy,
:mod:`probe.errors`, :mod:`probe.lock` and, of the store, ``layout`` (what to write),
``tensors``, ``starting``, ``files`` (extending datasets), ``packing``, ``triangles`` and
``errors``; never the reader.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import h5py
import numpy as np

from ..errors import ProbeError
from ..lock import WriterLock
from .errors import RefusedWrites, quiet_failed_closes
from .files import committed_on_disk, extend
from .layout import BYTE_STREAMS, STREAMS, committed_extent, dataset_path, stored_keys
from .tensors import DTYPES, UNITS, above_diagonal, check_dtype, tensor_attrs
from .packing import BatchRow, Packer, encode_rows
from .starting import create_file, reopen_file
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
        self.guard = RefusedWrites(f, self.path, lambda: self.n_done)  # a full disk, say
        self.dtype = DTYPES[dtype]
        self.n_done = int(f["state/n_done"][0])
        self.extent = committed_extent(f, self.n_done)  # where the next row goes, per unit/stream
        # handles looked up once: h5py lookups cost more than small writes
        self._ds = {name: f[name] for name in [*STREAMS, "state/n_done"]}
        self.tensors = TensorColumns(f, dtype)
        self.stored_keys = self.tensors.keys

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
        path = os.fspath(path)
        with quiet_failed_closes():
            return create_file(path, attrs, key_specs,
                               lambda f, lock: cls(f, dtype, lock, path=path), dtype=dtype,
                               compression=compression, n_examples=n_examples, typical=typical,
                               triangles=triangles)

    @classmethod
    def reopen(cls, path, *, dtype: str):
        """Reopen an unfinished run for appending (:func:`~probe.store.starting.reopen_file`:
        rows past the last commit are dropped, committed rows a kill tore given up)."""
        path = os.fspath(path)
        return reopen_file(path, lambda f, lock: cls(f, dtype, lock, path=path))

    def values_per_batch(self, n_rows: int, width: int) -> int:
        """Values of every stored key for ``n_rows`` rows padded to ``width`` tokens (what a
        captured batch holds in memory before it is written)."""
        return self.tensors.values_per_batch(n_rows, width)

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
        self.guard.check()
        with self.guard:
            n, streams = encode_rows(rows, self.extent)
            self.tensors.append(packed, n)
            self._commit(rows, n, streams)

    def write_key(self, key: str, source, spans) -> None:
        """Append one key of the batch being written, before :meth:`commit` (layer streaming).

        ``source`` is the key's padded torch tensor ``[batch, ...]`` (any device) and
        ``spans`` each row's ``(start, stop)``; its rows are cut, cast and appended in pieces
        of at most :data:`~probe.store.packing.PIECE_VALUES` values, so writing holds no copy of the tensor (the
        point of streaming long sequences). Nothing counts until :meth:`commit`:
        after a crash the partial batch is dropped on resume, like any uncommitted row.
        """
        self.guard.check()
        if key not in self.stored_keys:
            raise ProbeError(f"{key} is not stored in {self.path}")
        with self.guard:
            self.tensors.write_key(key, source, spans)

    def commit(self, rows: Sequence[BatchRow]) -> None:
        """Commit a batch whose every key was appended by :meth:`write_key`; a key missing
        or of the wrong size is an error (nothing is committed)."""
        self.guard.check()
        n, streams = encode_rows(rows, self.extent)
        wrong = self.tensors.wrong_size(n, self.extent)
        if wrong:
            raise ProbeError(f"{self.path}: {wrong}; the batch is not committed")
        with self.guard:
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

    def finish(self) -> None:
        with self.guard:
            self.f["state/complete"][0] = 1
            self.f.flush()

    def close(self) -> None:
        try:
            self.guard.close(committed_on_disk)
        finally:
            if self.lock is not None:
                self.lock.release()


class TensorColumns:
    """The tensor datasets of a run, and how a batch's keys are appended to them (cast and
    cut by a :class:`~probe.store.packing.Packer`). Nothing here commits: see RunWriter."""

    def __init__(self, f: h5py.File, dtype: str):
        self.keys = sorted(stored_keys(f))
        self._ds = {}  # key -> (dataset, unit, per_unit), looked up once
        above = {}  # triangle keys -> the value above their diagonal
        for key in self.keys:
            ds = f[dataset_path(key)]
            self._ds[key] = (ds, *tensor_attrs(ds)[:2])
            if self._ds[key][1] == "triangle":
                above[key] = above_diagonal(ds)
        self._packer = Packer(dtype, above)

    def values_per_batch(self, n_rows: int, width: int) -> int:
        return sum(per_unit * n_rows * (width if unit == "token" else width * width)
                   for _, unit, per_unit in self._ds.values())

    def append(self, packed, n: np.ndarray) -> None:
        """Every key of a whole batch whose rows have ``n`` tokens each."""
        for key in self.keys:
            ds, unit, per_unit = self._ds[key]
            extend(ds, self._packer.pack(key, packed, n, unit, per_unit))

    def write_key(self, key: str, source, spans) -> None:
        """One key of a batch, from its padded tensor, in pieces (layer streaming).

        The key's dataset is closed and opened again afterwards: HDF5 keeps up to
        ``CHUNK_CACHE`` of chunks cached per open dataset, and a streamed batch writes every
        key of every layer, so without this the caches of all layers' keys (8 layers x 7 keys
        x 2 MiB) were held at once; a key written once per batch has no use for them."""
        ds, unit, per_unit = self._ds[key]
        for piece in self._packer.pieces(key, source, spans):
            extend(ds, piece)
        f, name = ds.file, ds.name
        self._ds[key] = None
        del ds  # the last handle: closing it writes and frees its cached chunks
        self._ds[key] = (f[name], unit, per_unit)

    def wrong_size(self, n: np.ndarray, extent: dict) -> str | None:
        """What is missing before a batch of rows with ``n`` tokens each, whose keys were
        written one by one, can be committed over the committed ``extent`` (None: nothing)."""
        for key in self.keys:
            ds, unit, per_unit = self._ds[key]
            want = (extent[unit] + units_of_rows(unit, n)) * per_unit
            if ds.shape[0] != want:
                return f"{key} holds {ds.shape[0]} values where this batch's commit needs {want}"
        return None
