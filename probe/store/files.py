"""Opening run files in every state they can be in, refusing unsafe ones, and putting new
ones in place: the file handling the writer, the reader and ``combine`` share.

One job: hand over an ``h5py.File`` that is a probe run and reads only its own data (or its
shards'), publish or lock a run without ever overwriting one, and create and extend its
datasets. Imports h5py, numpy, :mod:`probe.names`, :mod:`probe.errors`, :mod:`probe.lock` and,
of the store, ``layout``, ``tensors``, ``attrs`` and ``errors``; the writer, reader and shards
import it.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os

import h5py
import numpy as np

from ..errors import InputError, ProbeError
from ..lock import WriterLock, lock_path, locked_error
from .errors import SchemaError, ShardError, UnsafeRunError, is_disk_full, write_failed
from .. import names
from .attrs import read_attr
from .layout import INDEX_FIELDS, READABLE_VERSIONS, SCHEMA, SCHEMA_VERSION, STREAMS, dataset_path
from .tensors import CHUNK_CACHE, per_unit_of, tensor_options, write_tensor_attrs


def _hdf5_library():
    """ctypes handle to the HDF5 library h5py uses (for ``H5Pset``), or None."""
    base = os.path.dirname(os.path.dirname(h5py.__file__))
    for pattern in (os.path.join(base, "h5py.libs", "libhdf5-*.so*"),
                    os.path.join(os.path.dirname(h5py.__file__), ".dylibs", "libhdf5*.dylib")):
        for path in glob.glob(pattern):
            if "_hl" not in os.path.basename(path):
                try:
                    lib = ctypes.CDLL(path)
                    lib.H5Pset.argtypes = [ctypes.c_int64, ctypes.c_char_p, ctypes.c_void_p]
                    return lib
                except OSError:
                    continue
    return None


def _open_clearing_flags(path: str, writable: bool) -> h5py.File:
    """Open a file left 'open for writing' by a killed writer (what ``h5clear -s`` does)."""
    lib = _hdf5_library()
    if lib is None:
        raise ProbeError(f"{path} was left open by a writer that stopped; clear it with "
                         f"`h5clear -s {path}` (HDF5 tools) and retry")
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    fapl.set_cache(0, CHUNK_CACHE["rdcc_nslots"], CHUNK_CACHE["rdcc_nbytes"], 0.75)
    flag = ctypes.c_bool(True)
    if lib.H5Pset(fapl.id, b"clear_status_flags", ctypes.byref(flag)) < 0:
        raise ProbeError(f"could not clear the status flags of {path}; run `h5clear -s {path}`")
    # writable: straight into SWMR-write mode, so even the resume's first steps keep the file
    # consistent on disk
    mode = (h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE) if writable else h5py.h5f.ACC_RDONLY
    return h5py.File(h5py.h5f.open(os.fsencode(path), mode, fapl=fapl))


def open_file(path, writable: bool = False) -> h5py.File:
    """Open a run file in every state it can be in: finished, being written (SWMR), or left
    behind by a killed writer."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"run file {path} does not exist")
    if os.path.isdir(path):
        raise InputError(f"{path} is a folder; give a run file (RUN.h5)")
    try:
        return _open_file(path, writable)
    except OSError as err:
        # HDF5's own file lock: another process has the file open for writing (not in SWMR
        # mode, so not a probe writer of this version, which holds RUN.h5.lock as well)
        if isinstance(err, BlockingIOError) or "unable to lock file" in str(err):
            raise locked_error(path, hdf5=True) from None
        raise


def _open_file(path: str, writable: bool) -> h5py.File:
    if writable and _hdf5_library() is not None:
        if not h5py.is_hdf5(path):
            raise InputError(f"{path} is not an HDF5 file; probe will not write to it")
        return _open_clearing_flags(path, writable=True)
    try:
        return h5py.File(path, "r+" if writable else "r", libver="latest" if writable else None,
                         **CHUNK_CACHE)
    except OSError as err:
        if isinstance(err, BlockingIOError):
            raise
        if "already open" not in str(err) and "consistency flags" not in str(err):
            said = " ".join(str(err).split())  # HDF5's messages span lines
            if writable:
                raise InputError(f"{path} cannot be opened as an HDF5 file for writing: {said}") from None
            raise SchemaError(f"{path} is not a readable HDF5 file ({said})") from None
    if not writable:
        try:
            return h5py.File(path, "r", libver="latest", swmr=True, **CHUNK_CACHE)
        except OSError:
            pass
    return _open_clearing_flags(path, writable)


def committed_on_disk(path) -> int | None:
    """``/state/n_done`` of the run at ``path`` as it is on disk (None when unreadable)."""
    try:
        with open_file(path) as f:
            return int(f["state/n_done"][0])
    except Exception:
        return None


def check_schema(f: h5py.File, path) -> None:
    """Refuse a file that is not a probe run of a schema version this code reads
    (:data:`~probe.store.layout.READABLE_VERSIONS`)."""
    schema = f.attrs.get("schema")
    version = f.attrs.get("schema_version")
    if schema != SCHEMA:
        raise SchemaError(f"{path} is not a probe run file (schema attribute {schema!r}, "
                          f"expected {SCHEMA!r})")
    if version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise SchemaError(f"{path} has schema version {version}; this probe (reads versions "
                          f"{readable}, writes {SCHEMA_VERSION}) cannot read it. Open it with the "
                          "probe version that wrote it (probe_version="
                          f"{f.attrs.get('probe_version')!r}) or re-run the capture")


def check_contents(f: h5py.File, path) -> None:
    """Refuse a file whose data lives outside it, and a combined run whose shards are gone.

    probe writes hard links only, and virtual datasets only in combined runs, over shard
    files beside them. HDF5 would follow an external link or a virtual dataset's source to
    any file on the machine (and a relative source it cannot find beside the run is looked
    up in the working directory), so a crafted run could put other files' bytes into a view
    or a combined run. Refused: external links, soft links that lead nowhere in the file,
    datasets stored in external raw files, virtual sources that resolve (after symlinks) outside the run's folder, that are missing,
    that are not plain runs themselves, or that are not the shards the run was combined from
    (the ``shard_ids`` attribute, when present).
    """
    path = os.fspath(path)
    expected = json.loads(read_attr(f.attrs.get("shard_ids", "{}")) or "{}")
    for name, real in outside_refs(f, path, allow_virtual=True).items():
        if not os.path.isfile(real):
            raise ShardError(f"{path} reads its tensors from the shard {name}, which is missing "
                             f"(looked for {real}); keep the shard files beside the combined "
                             "file, or combine them again")
        with open_file(real) as g:
            outside_refs(g, real, allow_virtual=False)
            want = expected.get(name)
            if want is not None and shard_identity(g, want.get("rows")) != want:
                raise ShardError(f"{path}: the shard {name} is not the file this run was combined "
                                 f"from (its run id or index differs from {want}); put the original "
                                 "shard back, or combine the current shards into a new file")


def outside_refs(f: h5py.File, path: str, *, allow_virtual: bool) -> dict[str, str]:
    """Walk every object of ``f``; refuse links out of the file; return the virtual datasets'
    source files as {name as stored: real path}, each checked to lie in the file's folder."""
    folder = os.path.dirname(os.path.abspath(path))
    real_folder = os.path.realpath(folder)
    sources: dict[str, str] = {}
    seen = set()

    def refuse(where, what):
        raise UnsafeRunError(f"{path}: {where} {what}; probe writes no such thing and will not "
                             "follow it (the file may be crafted). Use a run file written by probe")

    def walk(group, prefix):
        for name in group:
            where = f"{prefix}/{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                refuse(where, f"is an external link to {link.filename}:{link.path}")
            if isinstance(link, h5py.SoftLink):
                if group.get(name) is None:
                    refuse(where, f"is a soft link to {link.path}, which is not in the file")
                continue  # its target is walked on its own path
            obj = group[name]
            if obj.id in seen:
                continue
            seen.add(obj.id)
            if isinstance(obj, h5py.Group):
                walk(obj, where)
            elif isinstance(obj, h5py.Dataset) and obj.external:
                refuse(where, f"keeps its data in the external raw file {obj.external[0][0]!r}")
            elif isinstance(obj, h5py.Dataset) and obj.is_virtual:
                if not allow_virtual:
                    refuse(where, "is a virtual dataset inside a shard")
                for vmap in obj.virtual_sources():
                    src = vmap.file_name
                    if src == ".":
                        continue
                    real = os.path.realpath(os.path.join(folder, src))
                    if "%" in src or os.path.commonpath([real, real_folder]) != real_folder:
                        refuse(where, f"is a virtual dataset reading {src}, outside the run's "
                                      f"folder {real_folder}")
                    sources[src] = real

    try:
        walk(f, "")
    finally:
        # close the walked objects now: `walk` is a closure cycle, so `seen` would keep every
        # dataset open until the garbage collector runs, and refreshing a dataset (SWMR) while
        # a second handle of it is open makes HDF5 2.0 read later chunks from chunk 0
        seen.clear()
    return sources


def shard_identity(f: h5py.File, rows: int | None) -> dict:
    """What a combined run records of each shard: its random ``run_id``, or (shards written
    before run ids) its ``created`` time and a checksum of its first ``rows`` index rows."""
    if "run_id" in f.attrs:
        return {"run_id": str(read_attr(f.attrs["run_id"]))}
    digest = hashlib.blake2b(digest_size=16)
    for name in INDEX_FIELDS:
        digest.update(np.ascontiguousarray(f[f"index/{name}"][:rows]).tobytes())
    return {"created": str(read_attr(f.attrs.get("created", ""))), "rows": rows,
            "index_blake2b": digest.hexdigest()}


def publish(tmp: str, final: str) -> None:
    """Put a finished file at ``final`` without ever overwriting one that is there."""
    try:
        try:
            os.link(tmp, final)  # fails if `final` appeared meanwhile
        except FileExistsError:
            raise InputError(f"{final} already exists; probe never overwrites a run") from None
        except OSError:  # a file system without hard links
            if os.path.exists(final):
                raise InputError(f"{final} already exists; probe never overwrites a run") from None
            os.rename(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def acquire_lock(path, committed: int | None, **hint) -> WriterLock:
    """The run's writer lock; a full disk while writing the lock file is a disk-full error
    (lock.py raises the OS error after it holds the lock: the lock file is ours to remove)."""
    try:
        return WriterLock(path).acquire()
    except OSError as err:
        if not is_disk_full(err):
            raise
        try:
            os.unlink(lock_path(path))
        except OSError:
            pass
        raise write_failed(err, path, committed if committed is not None
                           else committed_on_disk(path), **hint) from None


def create_streams(f: h5py.File) -> None:
    """Every non-tensor dataset of a run (:data:`~probe.store.layout.STREAMS`), empty,
    extensible and checksummed."""
    for name, (kind, chunk) in STREAMS.items():
        f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=kind, chunks=(chunk,),
                         fletcher32=True)


def create_tensor(f: h5py.File, key: str, sizes, *, unit: str, dtype: str,
                  compression: str | None, n_examples: int, typical=None) -> h5py.Dataset:
    """The empty tensor dataset of ``key`` (fixed axis ``sizes``, 0 for token axes) counted in
    ``unit`` (token, square or triangle) with its attributes, chunked and checksummed as
    :func:`~probe.store.tensors.tensor_options` says (``typical``: mean tokens and tokens
    squared per example)."""
    _, component = names.parse_key(key)
    ds = f.create_dataset(dataset_path(key), **tensor_options(
        unit, sizes, dtype=dtype, compression=compression, n_examples=n_examples,
        typical=typical))
    write_tensor_attrs(ds, component, sizes, per_unit_of(sizes), dtype, unit)
    return ds


def extend(ds, data: np.ndarray) -> None:
    """Extend a 1-D dataset by ``data`` through h5py's low-level API (the high-level
    ``resize`` + slice assignment costs about 0.4 ms of Python per call; a batch makes ~40)."""
    dsid = ds.id
    old = dsid.get_space().shape[0]
    count = data.shape[0]
    dsid.set_extent((old + count,))
    if count:
        file_space = dsid.get_space()
        file_space.select_hyperslab((old,), (count,))
        dsid.write(h5py.h5s.create_simple((count,)), file_space,
                   np.ascontiguousarray(data, dtype=ds.dtype))
