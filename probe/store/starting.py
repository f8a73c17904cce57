"""Starting to write a run: creating a new run file, and reopening an unfinished one for
appending (the writer lock taken first, checks, committed rows a kill tore given up, rows past
the last commit dropped). Each hands an open ``h5py.File`` and its lock to
:class:`~probe.store.writer.RunWriter`, or leaves nothing behind when it fails.

One job: those two. Imports h5py, numpy, :mod:`probe.names`, :mod:`probe.errors`,
:mod:`probe.lock` and, of the store, ``layout`` (what a new file holds), ``tensors``,
``attrs``, ``files`` (opening, publishing, the lock), ``salvage`` and ``errors``; never the
reader.
"""

from __future__ import annotations

import os
import uuid
import warnings

import h5py
import numpy as np

from .. import names
from ..errors import InputError, ProbeWarning
from ..lock import WriterLock
from .attrs import to_attr
from .errors import close_or_detach, write_failed
from .files import (acquire_lock, check_contents, check_schema, committed_on_disk,
                    create_streams, create_tensor, open_file, publish)
from .layout import (BYTE_STREAMS, INDEX_FIELDS, SCHEMA, SCHEMA_VERSION, STATE, committed_extent,
                     dataset_path, stored_keys)
from .salvage import intact_rows
from .tensors import CHUNK_CACHE, tensor_attrs, unit_of


def reopen_file(path, make):
    """``make(file, lock)`` (the writer) over an unfinished run ready for appending, in SWMR
    mode: rows past the last commit dropped, and committed rows in a chunk a kill tore given
    up first. On failure the file is closed and the lock released."""
    lock = acquire_lock(path, committed=None)  # before anything touches the file
    f = None
    try:
        f = open_file(path, writable=True)
        check_schema(f, path)
        check_contents(f, path)
        tensors = [(f[dataset_path(key)], *tensor_attrs(f[dataset_path(key)])[:2])
                   for key in stored_keys(f)]
        _give_up_torn_rows(f, path, tensors)
        _truncate(f, int(f["state/n_done"][0]), tensors)
        f.flush()
        if not f.swmr_mode:
            f.swmr_mode = True
        return make(f, lock)
    except BaseException as err:
        if _abandon(f, lock, err):
            raise write_failed(err, path, committed_on_disk(path)) from None
        raise


def create_file(final: str, attrs: dict, key_specs: dict, make, **options):
    """``make(file, lock)`` (the writer) over a new run at ``final``: built at a temporary
    name, put in SWMR mode, then linked into place; on failure nothing is left (the file
    published is removed again) and the lock is released."""
    tmp = f"{final}.creating-{os.getpid()}"
    lock = acquire_lock(final, committed=0)
    f, made = None, tmp
    try:
        f = h5py.File(tmp, "w-", libver="latest", **CHUNK_CACHE)
        _fill_new(f, attrs, key_specs, **options)
        f.flush()
        f.swmr_mode = True
        publish(tmp, final)
        made = final  # ours: nothing was there (publish never overwrites), and we hold the lock
        return make(f, lock)
    except BaseException as err:
        if _abandon(f, lock, err, made):
            raise write_failed(err, final, 0) from None
        raise


def _give_up_torn_rows(f: h5py.File, path, tensors) -> None:
    """Move the commit counter back before committed rows a kill left unreadable (see
    :mod:`~probe.store.salvage`); the resume captures them again."""
    n_done = int(f["state/n_done"][0])
    kept, damaged = intact_rows(f, n_done, [(ds.name.lstrip("/"), unit, per_unit)
                                            for ds, unit, per_unit in tensors])
    if kept < n_done:
        f["state/n_done"][0] = kept
        f.flush()
        warnings.warn(f"{path}: the interrupted write left {', '.join(damaged)} unreadable "
                      f"(a chunk fails its checksum); {n_done - kept} committed example(s) "
                      "are dropped and captured again", ProbeWarning, stacklevel=4)


def _truncate(f: h5py.File, n_done: int, tensors) -> None:
    """Drop what lies past the last commit (rows of a batch a killed writer left unfinished).
    ``tensors``: ``(dataset, unit, per_unit)`` of every tensor."""
    extent = committed_extent(f, n_done)
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
    write), remove ``tmp`` (the file this call made, if any), release the lock. Returns
    whether ``err`` was a refused write (the caller raises
    :func:`~probe.store.errors.write_failed`)."""
    failure = close_or_detach(f, err)
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)
    lock.release()
    return failure
