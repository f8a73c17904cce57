"""HDF5 run files: layout, crash-safe writer, lazy reader. The store stores; it computes nothing
beyond deriving ``value_weighted`` from ``pattern`` and ``value_norm`` on read.

Layout (schema ``probe.run`` version 1; README.md has a full h5py-only example)::

    /                      attrs: provenance and settings (schema, versions, model, dtype, ...)
    /state/n_done          int64 [1]   rows committed; only rows < n_done are valid
    /state/complete        int8  [1]   1 once the run finished
    /index/example         int64 [row] input index of each stored row (rows are in batch order)
    /index/n_tokens        int32 [row]
    /index/token_start     int64 [row] first token of the row, in token units
    /index/square_start    int64 [row] first cell of the row, in n_tokens**2 units
    /index/text_start, text_len, meta_start, meta_len   int64 [row]  byte ranges
    /examples/text         uint8 [byte]  UTF-8 texts, concatenated
    /examples/meta         uint8 [byte]  UTF-8 JSON objects (id and other input fields)
    /tokens/input_ids      int32 [token] token ids, concatenated
    /tokens/end            int64 [token] end byte of each token string in /tokens/text
    /tokens/text           uint8 [byte]  UTF-8 token strings, concatenated
    /blocks/{l}/attn/{c}   float [elem]  each row's [axes] array, C-order flattened, concatenated;
                           attrs: axes, sizes (0 = n_tokens), unit ("token" or "square"),
                           per_unit (elements per unit); row r starts at
                           {unit}_start[r] * per_unit.

Why this layout (measured, see README): ragged concatenation keeps files free of padding and
makes one example one contiguous slice per tensor; fixed-type datasets are what HDF5's SWMR
mode supports, and SWMR keeps the file consistent on disk at every moment, so a run killed at
any point still opens, with every committed batch intact.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import json
import os
import sys
import time
import traceback
import uuid
from collections.abc import Sequence

import h5py
import numpy as np

from . import names
from .attention import value_weighted
from .captures import Capture, CapturedBatch, Example, KeyedSequence
from .errors import InputError, ProbeError
from .lock import WriterLock, lock_path, locked_error

SCHEMA = "probe.run"
SCHEMA_VERSION = 1
CHUNK_ELEMENTS = 1 << 18  # at most 256 Ki elements a chunk: 512 KiB in float16, 1 MiB in float32
MIN_CHUNK_ELEMENTS = 1 << 10
TYPICAL_TOKENS = 32  # for sizing chunks before the lengths are known
INDEX_FIELDS = ("example", "n_tokens", "token_start", "square_start", "text_start", "text_len",
                "meta_start", "meta_len")
BYTE_STREAMS = ("examples/text", "examples/meta", "tokens/text")
DTYPES = {"float32": np.float32, "float16": np.float16}


class SchemaError(ProbeError):
    """The file is not a probe run of a schema version this code reads."""


class UnsafeRunError(SchemaError):
    """The file links to data outside itself (or outside its folder), which probe never writes."""


class ShardError(ProbeError):
    """A combined run's shard files are missing or are not the ones it was combined from."""


class CorruptRunError(SchemaError):
    """Stored data fails its checksum or the index contradicts itself (a damaged file)."""


class WriteFailedError(ProbeError):
    """The operating system refused a write to a run file; ``committed`` rows are safe on disk."""

    def __init__(self, message: str, path: str, committed: int | None, cause=None):
        super().__init__(message)
        self.path, self.committed, self.cause = path, committed, cause


class DiskFullError(WriteFailedError):
    """The disk (or quota) filled up while writing a run."""


def is_disk_full(err: BaseException) -> bool:
    """Whether an error from h5py or the OS means 'no space left' (ENOSPC, EDQUOT). HDF5 folds
    the OS error into its message (``file write failed: ... errno = 28``), so both are read."""
    if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return any(s in text for s in ("No space left", "Disk quota exceeded", "errno = 28",
                                   f"errno = {errno.EDQUOT}"))


def is_write_failure(err: BaseException) -> bool:
    """An OS-level write failure reported by h5py (disk full, I/O error): the file handle can
    no longer be flushed, so it must be detached (:func:`_detach`) before it is closed."""
    return isinstance(err, (OSError, RuntimeError)) and (
        is_disk_full(err) or "file write failed" in str(err) or "write request failed" in str(err))


def write_failed(err: BaseException, path, committed: int | None, *, removed: bool = False,
                 resume_hint: bool = True):
    """The project error for a failed write of ``path``: one line, no HDF5 error stack.
    ``removed``: the partial output was deleted (nothing to resume)."""
    if removed:
        done = "nothing was written (the partial file was removed)"
    elif committed is None:
        done = "the committed examples are kept"
    else:
        done = f"committed {committed} examples"
    again = "rerun with --resume" if resume_hint else "run the command again"
    if is_disk_full(err):
        return DiskFullError(f"disk full while writing {path}; {done}; free space and {again}",
                             os.fspath(path), committed, err)
    reason = getattr(err, "strerror", None) or str(err).split("(")[0].strip() or type(err).__name__
    return WriteFailedError(f"write failed while writing {path} ({reason}); {done}; fix the "
                            f"disk and {again}", os.fspath(path), committed, err)


def _detach(f: h5py.File) -> None:
    """Point HDF5's file descriptor at an anonymous in-memory file, so that closing a file whose
    writes fail (disk full) neither raises nor crashes.

    Measured here (h5py 3.16, HDF5 2.0): after a write fails with ENOSPC, every later flush
    fails too; ``close`` then raises, h5py's deallocators print a traceback per object, and the
    interpreter segfaults at exit while HDF5 retries the flush. With the descriptor swapped,
    what HDF5 still writes goes to memory and is dropped; the file on disk stays exactly as
    the failed write left it: consistent (SWMR writes metadata in dependency order), every
    committed row intact, ready for ``--resume``.
    """
    try:
        fd = f.id.get_vfd_handle()
    except Exception:  # not the sec2 driver, or already closed: nothing to swap
        return
    if not isinstance(fd, int) or fd < 0:
        return
    try:
        sink = os.memfd_create("probe-discard") if hasattr(os, "memfd_create") else \
            os.open(os.devnull, os.O_RDWR)
    except OSError:
        sink = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(sink, fd)
    finally:
        os.close(sink)


@contextlib.contextmanager
def _quiet_failed_closes():
    """Silence h5py's 'Exception ignored in ObjectID.__dealloc__' for write failures.

    When a write fails inside h5py's own (Cython) code, e.g. ``create_dataset(data=...)``
    on a full disk, h5py drops the objects it made before the error reaches us, and their
    close (which flushes) fails and is printed as a traceback. Only those are swallowed; any
    other unraisable error goes to the previous hook."""
    previous, previous_except = sys.unraisablehook, sys.excepthook

    def hook(unraisable):
        if not (is_write_failure(unraisable.exc_value)
                and "dealloc" in str(getattr(unraisable, "err_msg", "") or "") + repr(unraisable.object)):
            previous(unraisable)

    def excepthook(kind, value, tb):  # Cython prints the full traceback through this first
        if not (is_write_failure(value) and "_dealloc" in repr(traceback.extract_tb(tb))):
            previous_except(kind, value, tb)

    sys.unraisablehook, sys.excepthook = hook, excepthook
    try:
        yield
    finally:
        sys.unraisablehook, sys.excepthook = previous, previous_except


def _close_after_failure(f: h5py.File) -> None:
    """Close ``f`` after a failed write: detach it, then close, never raising."""
    if not f.id.valid:
        return
    _detach(f)
    try:
        f.close()
    except Exception:
        pass


def dataset_path(key: str) -> str:
    """HDF5 path of a capture key: ``blocks.3.attn.q -> blocks/3/attn/q``."""
    layer, component = names.parse_key(key)
    return f"blocks/{layer}/attn/{component}"


def unit_of(component: str) -> str:
    """``square`` for [head, query, key] tensors, ``token`` for the rest."""
    axes = names.AXES[component]
    return "square" if "query" in axes and "key" in axes else "token"


def compression_args(compression: str | None) -> dict:
    """h5py keyword arguments for ``none``, ``lzf``, ``gzip`` or ``gzip-N``."""
    if compression in (None, "", "none"):
        return {}
    if compression == "lzf":
        return {"compression": "lzf"}
    if compression.startswith("gzip"):
        level = int(compression.split("-")[1]) if "-" in compression else 4
        return {"compression": "gzip", "compression_opts": level, "shuffle": True}
    raise InputError(f"unknown compression {compression!r}: use none, lzf, gzip or gzip-N (N=1..9)")


# ------------------------------------------------------------------------- opening files
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
        return h5py.File(path, "r+" if writable else "r", libver="latest" if writable else None)
    except OSError as err:
        if isinstance(err, BlockingIOError):
            raise
        if "already open" not in str(err) and "consistency flags" not in str(err):
            if writable:
                raise InputError(f"{path} cannot be opened as an HDF5 file for writing: {err}") from None
            raise SchemaError(f"{path} is not a readable HDF5 file ({err})") from None
    if not writable:
        try:
            return h5py.File(path, "r", libver="latest", swmr=True)
        except OSError:
            pass
    return _open_clearing_flags(path, writable)


def check_schema(f: h5py.File, path) -> None:
    schema = f.attrs.get("schema")
    version = f.attrs.get("schema_version")
    if schema != SCHEMA:
        raise SchemaError(f"{path} is not a probe run file (schema attribute {schema!r}, "
                          f"expected {SCHEMA!r})")
    if version != SCHEMA_VERSION:
        raise SchemaError(f"{path} has schema version {version}; this probe ({SCHEMA_VERSION}) "
                          "cannot read it. Open it with the probe version that wrote it "
                          f"(probe_version={f.attrs.get('probe_version')!r}) or re-run the capture")


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
    expected = json.loads(_attr(f.attrs.get("shard_ids", "{}")) or "{}")
    for name, real in _outside_refs(f, path, allow_virtual=True).items():
        if not os.path.isfile(real):
            raise ShardError(f"{path} reads its tensors from the shard {name}, which is missing "
                             f"(looked for {real}); keep the shard files beside the combined "
                             "file, or combine them again")
        with open_file(real) as g:
            _outside_refs(g, real, allow_virtual=False)
            want = expected.get(name)
            if want is not None and _shard_identity(g, want.get("rows")) != want:
                raise ShardError(f"{path}: the shard {name} is not the file this run was combined "
                                 f"from (its run id or index differs from {want}); put the original "
                                 "shard back, or combine the current shards into a new file")


def _outside_refs(f: h5py.File, path: str, *, allow_virtual: bool) -> dict[str, str]:
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


def _shard_identity(f: h5py.File, rows: int | None) -> dict:
    """What a combined run records of each shard: its random ``run_id``, or (shards written
    before run ids) its ``created`` time and a checksum of its first ``rows`` index rows."""
    if "run_id" in f.attrs:
        return {"run_id": str(_attr(f.attrs["run_id"]))}
    digest = hashlib.blake2b(digest_size=16)
    for name in INDEX_FIELDS:
        digest.update(np.ascontiguousarray(f[f"index/{name}"][:rows]).tobytes())
    return {"created": str(_attr(f.attrs.get("created", ""))), "rows": rows,
            "index_blake2b": digest.hexdigest()}


# ------------------------------------------------------------------------- layout helpers
def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (the ``created`` attribute)."""
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}: use {' or '.join(DTYPES)}")


def _write_layout(ds, component: str, sizes, per_unit: int) -> None:
    """The attributes that say how to cut one example out of a tensor dataset."""
    ds.attrs["axes"] = _attr_value(list(names.AXES[component]))
    ds.attrs["sizes"] = [int(x) for x in sizes]
    ds.attrs["unit"] = unit_of(component)
    ds.attrs["per_unit"] = int(per_unit)


def _layout(ds) -> tuple[str, int, list[int]]:
    """``(unit, per_unit, sizes)`` of a tensor dataset (see :func:`_write_layout`)."""
    return (str(_attr(ds.attrs["unit"])), int(ds.attrs["per_unit"]),
            [int(x) for x in ds.attrs["sizes"]])


def _committed_extent(f, n_done: int) -> dict[str, int]:
    """How far the committed rows reach: token and square units, and bytes of each stream."""
    if n_done == 0:
        return dict.fromkeys(("token", "square", *BYTE_STREAMS), 0)
    last = {name: int(f[f"index/{name}"][n_done - 1]) for name in INDEX_FIELDS}
    n = last["n_tokens"]
    tokens = last["token_start"] + n
    return {"token": tokens, "square": last["square_start"] + n * n,
            "examples/text": last["text_start"] + last["text_len"],
            "examples/meta": last["meta_start"] + last["meta_len"],
            "tokens/text": int(f["tokens/end"][tokens - 1]) if tokens else 0}


def _publish(tmp: str, final: str) -> None:
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


# ------------------------------------------------------------------------- writing
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
        self._buffer: np.ndarray | None = None  # packing buffer, reused (see _scratch)
        self._load_cursor()
        # handles and attributes looked up once: h5py lookups cost more than small writes
        self._ds = {name: f[name] for name in
                    [f"index/{n}" for n in INDEX_FIELDS] + list(BYTE_STREAMS)
                    + ["tokens/input_ids", "tokens/end", "state/n_done"]}
        self._key_ds = {}
        for key in self.stored_keys:
            ds = f[dataset_path(key)]
            self._key_ds[key] = (ds, *_layout(ds)[:2])

    # creation ---------------------------------------------------------------
    @classmethod
    def create(cls, path, attrs: dict, key_specs: dict, *, dtype: str, compression: str | None,
               n_examples: int = 1 << 20):
        """New file with every dataset created up front (SWMR allows no new objects later).

        ``key_specs`` maps stored keys to their fixed sizes per axis (0 for the token axes).
        Chunks are sized for about 64 chunks per dataset over ``n_examples`` examples, between
        4 Ki and 256 Ki elements, so small runs stay small and large ones read fast.
        """
        check_dtype(dtype)
        with _quiet_failed_closes():
            return cls._create(path, attrs, key_specs, dtype=dtype, compression=compression,
                               n_examples=n_examples)

    @classmethod
    def _create(cls, path, attrs: dict, key_specs: dict, *, dtype: str, compression: str | None,
                n_examples: int):
        comp = compression_args(compression)
        # built under a temporary name and linked into place once in SWMR mode, so a crash
        # during creation never leaves a half-made run at `path`
        final, path = os.fspath(path), f"{os.fspath(path)}.creating-{os.getpid()}"
        lock = _acquire_lock(final, committed=0)
        try:
            f = h5py.File(path, "w-", libver="latest")
        except BaseException as err:
            lock.release()
            if os.path.exists(path):
                os.unlink(path)
            if is_write_failure(err):
                raise write_failed(err, final, 0) from None
            raise
        try:
            for k, v in attrs.items():
                f.attrs[k] = _attr_value(v)
            f.attrs["run_id"] = uuid.uuid4().hex  # what a combined run checks its shards by
            f.attrs["schema"] = SCHEMA
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.create_dataset("state/n_done", data=np.zeros(1, np.int64))
            f.create_dataset("state/complete", data=np.zeros(1, np.int8))
            # every data dataset carries HDF5's fletcher32 checksum per chunk: a damaged chunk
            # fails its read (and `probe verify`) instead of returning wrong numbers
            for name in INDEX_FIELDS:
                f.create_dataset(f"index/{name}", shape=(0,), maxshape=(None,),
                                 dtype=np.int32 if name == "n_tokens" else np.int64,
                                 chunks=(1 << 11,), fletcher32=True)
            for name in BYTE_STREAMS:
                f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.uint8,
                                 chunks=(1 << 13,), fletcher32=True)
            f.create_dataset("tokens/input_ids", shape=(0,), maxshape=(None,), dtype=np.int32,
                             chunks=(1 << 12,), fletcher32=True)
            f.create_dataset("tokens/end", shape=(0,), maxshape=(None,), dtype=np.int64,
                             chunks=(1 << 12,), fletcher32=True)
            for key, sizes in key_specs.items():
                _, component = names.parse_key(key)
                per_unit = int(np.prod([s for s in sizes if s]))
                per_example = per_unit * TYPICAL_TOKENS ** (2 if unit_of(component) == "square" else 1)
                chunk = 1 << int(np.ceil(np.log2(max(n_examples * per_example / 64, 1))))
                chunk = int(np.clip(chunk, MIN_CHUNK_ELEMENTS, CHUNK_ELEMENTS))
                ds = f.create_dataset(dataset_path(key), shape=(0,), maxshape=(None,),
                                      dtype=DTYPES[dtype], chunks=(chunk,), fletcher32=True,
                                      **comp)
                _write_layout(ds, component, sizes, per_unit)
            f.flush()
            f.swmr_mode = True
            _publish(path, final)
        except BaseException as err:
            failure = is_write_failure(err)
            if failure:
                _close_after_failure(f)
            elif f.id.valid:
                f.close()
            if os.path.exists(path):
                os.unlink(path)
            lock.release()
            if failure:
                raise write_failed(err, final, 0) from None
            raise
        return cls(f, dtype, lock, path=final)

    @classmethod
    def reopen(cls, path, *, dtype: str):
        """Reopen an unfinished run for appending; rows past the last commit are dropped."""
        lock = _acquire_lock(path, committed=None)  # before anything touches the file
        f = None
        try:
            f = open_file(path, writable=True)
            check_schema(f, path)
            check_contents(f, path)
            writer = cls(f, dtype, lock, path=path)
            writer._truncate_to_commit()
            f.flush()
            if not f.swmr_mode:
                f.swmr_mode = True
        except BaseException as err:
            failure = is_write_failure(err)
            if f is not None and failure:
                _close_after_failure(f)
            elif f is not None and f.id.valid:
                f.close()
            lock.release()
            if failure:
                raise write_failed(err, path, _committed_on_disk(path)) from None
            raise
        return writer

    # state ------------------------------------------------------------------
    def _load_cursor(self):
        f = self.f
        self.n_done = int(f["state/n_done"][0])
        self.stored_keys = sorted(_stored_keys(f))
        extent = _committed_extent(f, self.n_done)
        self.token_cursor, self.square_cursor = extent["token"], extent["square"]
        self.byte_cursor = {name: extent[name] for name in BYTE_STREAMS}

    def _truncate_to_commit(self):
        f = self.f
        for name in INDEX_FIELDS:
            f[f"index/{name}"].resize((self.n_done,))
        for name, end in self.byte_cursor.items():
            f[name].resize((end,))
        f["tokens/input_ids"].resize((self.token_cursor,))
        f["tokens/end"].resize((self.token_cursor,))
        for ds, unit, per_unit in self._key_ds.values():
            units = self.token_cursor if unit == "token" else self.square_cursor
            ds.resize((units * per_unit,))

    def done_examples(self) -> np.ndarray:
        """Input indices of the committed rows."""
        return self.f["index/example"][: self.n_done]

    # appending --------------------------------------------------------------
    def append(self, rows: list[dict], packed) -> None:
        """Write and commit one batch. Each row: index, tokens, input_ids, text, meta.

        ``packed`` is the batch's :class:`~probe.captures.CapturedBatch` (rows in the same
        order), or a mapping ``key -> the rows' arrays of that key flattened and concatenated
        in row order`` (what :meth:`~probe.captures.CapturedBatch.packed` returns). From a
        batch, each key is packed with one copy into a buffer this writer reuses for every key
        and batch, and that buffer is what HDF5 writes from: no per-batch allocation, one copy.
        """
        if self.failed is not None:
            raise ProbeError(f"{self.path}: an earlier write failed; close this writer and "
                             "resume the run")
        try:
            self._append(rows, packed)
        except (OSError, RuntimeError) as err:
            if not is_write_failure(err):
                raise
            raise self._fail(err) from None

    def _append(self, rows: list[dict], packed) -> None:
        f, D = self.f, self._ds
        n = np.array([len(r["tokens"]) for r in rows], np.int64)
        token_start = self.token_cursor + np.concatenate([[0], np.cumsum(n)[:-1]])
        square_start = self.square_cursor + np.concatenate([[0], np.cumsum(n * n)[:-1]])
        texts = [r["text"].encode("utf-8") for r in rows]
        metas = [json.dumps(r["meta"], ensure_ascii=False, default=str).encode("utf-8")
                 for r in rows]
        token_strings = [t.encode("utf-8") for r in rows for t in r["tokens"]]
        text_start = self.byte_cursor["examples/text"] + _starts(texts)
        meta_start = self.byte_cursor["examples/meta"] + _starts(metas)
        token_end = self.byte_cursor["tokens/text"] + np.cumsum([len(t) for t in token_strings])

        for key in self.stored_keys:
            ds, unit, per_unit = self._key_ds[key]
            units = n.sum() if unit == "token" else (n * n).sum()
            if isinstance(packed, CapturedBatch):
                data = packed.packed(key, self.dtype, out=self._scratch(packed.packed_size(key)))
            else:
                data = packed[key]
            if data.shape != (units * per_unit,):
                raise ProbeError(f"{key}: got {data.shape[0]} values for a batch that needs "
                                 f"{units * per_unit}")
            _append(ds, data.astype(self.dtype, copy=False))
        _append(D["tokens/input_ids"], np.concatenate([np.asarray(r["input_ids"], np.int32)
                                                       for r in rows]))
        _append(D["tokens/end"], token_end.astype(np.int64))
        _append(D["tokens/text"], np.frombuffer(b"".join(token_strings), np.uint8))
        _append(D["examples/text"], np.frombuffer(b"".join(texts), np.uint8))
        _append(D["examples/meta"], np.frombuffer(b"".join(metas), np.uint8))
        index = {"example": [r["index"] for r in rows], "n_tokens": n,
                 "token_start": token_start, "square_start": square_start,
                 "text_start": text_start, "text_len": [len(t) for t in texts],
                 "meta_start": meta_start, "meta_len": [len(m) for m in metas]}
        for name in INDEX_FIELDS:
            ds = D[f"index/{name}"]
            _append(ds, np.asarray(index[name], dtype=ds.dtype))
        f.flush()
        # commit: only now does the batch count (the counter moves once the commit is on disk)
        D["state/n_done"][0] = self.n_done + len(rows)
        f.flush()
        self.n_done += len(rows)
        self.token_cursor += int(n.sum())
        self.square_cursor += int((n * n).sum())
        self.byte_cursor["examples/text"] += sum(len(t) for t in texts)
        self.byte_cursor["examples/meta"] += sum(len(m) for m in metas)
        self.byte_cursor["tokens/text"] += sum(len(t) for t in token_strings)

    def _scratch(self, size: int) -> np.ndarray:
        """The reused packing buffer, grown (by half again, to grow rarely) when too small."""
        buf = self._buffer
        if buf is None or buf.shape[0] < size:
            grown = int(1.5 * buf.shape[0]) if buf is not None else 0
            buf = self._buffer = np.empty(max(size, grown), self.dtype)
        return buf

    def _fail(self, err: BaseException) -> WriteFailedError:
        """Remember a write the OS refused, detach the file (see :func:`_detach`) and return
        the error to raise. The row count on disk is read back after close (a failed commit
        flush may or may not have landed)."""
        self.failed = err
        _detach(self.f)
        return write_failed(err, self.path, self.n_done)

    def finish(self) -> None:
        try:
            self.f["state/complete"][0] = 1
            self.f.flush()
        except (OSError, RuntimeError) as err:
            if not is_write_failure(err):
                raise
            raise self._fail(err) from None

    def close(self) -> None:
        try:
            if self.failed is not None:
                _close_after_failure(self.f)
            elif self.f.id.valid:
                try:
                    self.f.close()
                except (OSError, RuntimeError) as err:  # the closing flush hit a full disk
                    if not is_write_failure(err):
                        raise
                    self._fail(err)
                    _close_after_failure(self.f)
                    raise write_failed(err, self.path, _committed_on_disk(self.path)) from None
        finally:
            if self.lock is not None:
                self.lock.release()


def _acquire_lock(path, committed: int | None, **hint) -> WriterLock:
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
                           else _committed_on_disk(path), **hint) from None


def _committed_on_disk(path) -> int | None:
    """``/state/n_done`` of the run at ``path`` as it is on disk (None when unreadable)."""
    try:
        with open_file(path) as f:
            return int(f["state/n_done"][0])
    except Exception:
        return None


def _attr_value(value):
    """Attributes as h5py stores them: lists of strings become variable-length string arrays."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return np.array(list(value), dtype=h5py.string_dtype())
    if value is None:
        return ""
    if isinstance(value, str):
        return str(value)  # plain str: h5py cannot store str subclasses (e.g. TorchVersion)
    return value


def _starts(chunks) -> np.ndarray:
    lengths = np.array([len(c) for c in chunks], np.int64)
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def _append(ds, data: np.ndarray) -> None:
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


def _stored_keys(f: h5py.File) -> list[str]:
    keys = []
    if "blocks" not in f:
        return keys
    for layer in f["blocks"]:
        for component in f[f"blocks/{layer}/attn"]:
            keys.append(names.key(int(layer), component))
    return keys


# ------------------------------------------------------------------------- reading
class Run(KeyedSequence):
    """A run file opened lazily, with the interface of a live :class:`~probe.captures.Capture`.

    ``run[i]`` is the i-th committed example in input order (``ex.index`` is its input
    index); tensors are read from disk when indexed and returned as float32 numpy arrays
    (stored float16 is widened). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path, *, layers=None, components=None):
        self.path = os.fspath(path)
        self.f = open_file(self.path)
        self._handles: dict = {}
        try:
            check_schema(self.f, self.path)
            check_contents(self.f, self.path)
            self.attrs = {k: _attr(v) for k, v in self.f.attrs.items()}
            self._load_index()
        except BaseException:
            self.f.close()
            raise
        self.keys = tuple(self.attrs["keys"])
        if layers is not None or components is not None:
            self.keys = self.select(layers=layers, components=components).keys

    def _load_index(self):
        f = self.f
        for name in REQUIRED:
            if not isinstance(f.get(name), h5py.Dataset):
                raise CorruptRunError(f"{self.path} has no dataset /{name}; the file is damaged "
                                      "or not written by probe (`probe verify` lists what is wrong)")
        missing = [key for key in self.attrs.get("stored_keys") or []
                   if not isinstance(f.get(dataset_path(key)), h5py.Dataset)]
        if missing:
            raise CorruptRunError(f"{self.path} lists {missing[0]} in stored_keys but has no "
                                  f"dataset /{dataset_path(missing[0])}; the file is damaged")
        for attempt in range(20):
            try:
                return self._read_index()
            except CorruptRunError:
                if not f.swmr_mode or attempt == 19:
                    raise
                time.sleep(0.05)  # a live writer between its steps: look again

    def _read_index(self):
        f = self.f
        live = [dataset_path(k) for k in _stored_keys(f)] + [n for n in REQUIRED if n[:6] != "state/"]
        if f.swmr_mode:  # a live run: the commit counter first, then the lengths it points into
            # (the writer grows every dataset before it commits, so lengths read after the
            # counter cover it). Through the one cached handle per dataset: refreshing a second
            # handle of a dataset whose chunks were read makes HDF5 2.0 return chunk 0's bytes
            # for later chunks (measured here on a filtered, extensible dataset)
            self._dataset("state/n_done")[0].refresh()
            self._dataset("state/complete")[0].refresh()
        n_done = int(self._read_all("state/n_done")[0])
        complete = bool(self._read_all("state/complete")[0])
        if f.swmr_mode:
            for name in live:
                self._dataset(name)[0].refresh()
        rows = min(self._dataset(f"index/{name}")[0].shape[0] for name in INDEX_FIELDS)
        if not 0 <= n_done <= rows:
            raise CorruptRunError(f"{self.path}: /state/n_done is {n_done}, outside 0..{rows} (the "
                                  f"index holds {rows} rows); the file is damaged")
        index = {name: self._read(f"index/{name}", 0, n_done) for name in INDEX_FIELDS}
        problem = index_problem(index, self._sizes())
        if problem:
            raise CorruptRunError(f"{self.path}: the index is inconsistent ({problem}); the file "
                                  "is damaged (`probe verify` lists what is wrong)")
        self.n_done, self.complete, self.index = n_done, complete, index
        self._order = np.argsort(self.index["example"], kind="stable")

    def _sizes(self) -> dict:
        """Lengths of the streams the index points into, in their own units."""
        f = self.f
        sizes = {name: self._dataset(name)[0].shape[0]
                 for name in (*BYTE_STREAMS, "tokens/input_ids", "tokens/end")}
        for key in _stored_keys(f):
            ds, unit, per_unit, _ = self._dataset(dataset_path(key))
            sizes[(unit, key)] = ds.shape[0] // max(per_unit, 1)
        return sizes

    def _read_all(self, name):
        return self._read(name, 0, self._dataset(name)[0].shape[0])

    def refresh(self) -> None:
        """Re-read the commit state (for a run still being written)."""
        self._load_index()

    def __len__(self) -> int:
        return self.n_done

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Capture([self[j] for j in range(*i.indices(len(self)))], self.keys)
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} out of range: the run holds {len(self)} examples")
        return self._example(int(self._order[i]))

    def _dataset(self, name):
        """(dataset, unit, per_unit, sizes), looked up once: h5py lookups of groups and
        attributes cost more than the reads of one example."""
        entry = self._handles.get(name)
        if entry is None:
            ds = self.f[name]
            if name.startswith("blocks/"):
                entry = (ds, *_layout(ds))
            else:
                entry = (ds, None, 1, None)
            self._handles[name] = entry
        return entry

    def _read(self, name, start, stop, example=None):
        """``ds[start:stop]`` through h5py's low-level read (a fifth of the Python cost); a
        chunk that fails its checksum (or any read error) is a :class:`CorruptRunError`
        naming the file, dataset and example."""
        ds = self._dataset(name)[0]
        count = int(stop) - int(start)
        out = np.empty(count, dtype=ds.dtype)
        if count:
            try:
                file_space = ds.id.get_space()
                file_space.select_hyperslab((int(start),), (count,))
                ds.id.read(h5py.h5s.create_simple((count,)), file_space, out)
            except (OSError, ValueError, RuntimeError) as err:
                raise damaged_read(self.path, name, start, stop, err, example) from None
        return out

    def _example(self, row: int) -> Example:
        ix = {name: int(self.index[name][row]) for name in INDEX_FIELDS}
        n = ix["n_tokens"]
        t0 = ix["token_start"]
        where = ix["example"]
        ends = self._read("tokens/end", max(t0 - 1, 0), t0 + n, where)
        if t0 == 0:
            ends = np.concatenate([[0], ends])
        if np.any(np.diff(ends) < 0) or ends[0] < 0 or ends[-1] > self._dataset("tokens/text")[0].shape[0]:
            raise CorruptRunError(f"{self.path}: /tokens/end of example {where} is not an "
                                  "increasing range inside /tokens/text; the file is damaged")
        raw = self._read("tokens/text", int(ends[0]), int(ends[-1]), where).tobytes()
        local = ends - ends[0]
        try:
            tokens = [raw[local[j]:local[j + 1]].decode("utf-8") for j in range(n)]
            text = self._read("examples/text", ix["text_start"], ix["text_start"] + ix["text_len"],
                              where).tobytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise CorruptRunError(f"{self.path}: the text or tokens of example {where} are not "
                                  f"valid UTF-8 ({err.reason}); the file is damaged") from None
        meta = self._meta(ix["meta_start"], ix["meta_len"], where)
        input_ids = self._read("tokens/input_ids", t0, t0 + n, where)
        starts = {"token": t0, "square": ix["square_start"]}

        def get(key):
            name = dataset_path(key)
            _, unit, per_unit, sizes = self._dataset(name)
            units = n if unit == "token" else n * n
            start = starts[unit] * per_unit
            flat = self._read(name, start, start + units * per_unit, where)
            return flat.reshape([s if s else n for s in sizes]).astype(np.float32, copy=False)

        return Example(tokens, self.keys, get, text=text, input_ids=input_ids, meta=meta,
                       index=ix["example"])

    def metas(self) -> list[dict]:
        """Every committed example's metadata in input order, from one read of the metadata
        stream (no tokens or tensors are read)."""
        if not self.n_done:
            return []
        start, length = self.index["meta_start"], self.index["meta_len"]
        raw = self._read("examples/meta", 0, int(start[-1] + length[-1])).tobytes()
        return [decode_meta(raw[start[r]:start[r] + length[r]], self.path,
                            int(self.index["example"][r])) for r in self._order]

    def _meta(self, start: int, length: int, example) -> dict:
        return decode_meta(self._read("examples/meta", start, start + length, example).tobytes(),
                           self.path, example)

    def select(self, *, layers=None, components=None) -> Capture:
        """A lazy view with only the given layers and components (as ``Capture.select``)."""
        return Capture(_LazyExamples(self), self.keys).select(layers=layers, components=components)

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return (f"Run({self.path!r}, {len(self)} examples, {state}, layers {list(self.layers)}, "
                f"components {list(self.components)})")


class _LazyExamples(Sequence):
    """Examples of a run materialised on access (keeps select() lazy for big runs)."""

    def __init__(self, run: Run):
        self.run = run

    def __len__(self):
        return len(self.run)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.run[j] for j in range(*i.indices(len(self)))]
        return self.run[i]


#: datasets every run has (tensors are listed by the file's ``stored_keys``)
REQUIRED = ("state/n_done", "state/complete", *[f"index/{n}" for n in INDEX_FIELDS],
            *BYTE_STREAMS, "tokens/input_ids", "tokens/end")


def decode_meta(raw: bytes, path, example) -> dict:
    """One example's metadata (a UTF-8 JSON object), or a :class:`CorruptRunError`."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise CorruptRunError(f"{path}: the metadata of example {example} is not UTF-8 JSON "
                              f"({err}); the file is damaged") from None
    if not isinstance(meta, dict):
        raise CorruptRunError(f"{path}: the metadata of example {example} is "
                              f"{type(meta).__name__}, not a JSON object; the file is damaged")
    return meta


def damaged_read(path, name, start, stop, err, example=None) -> CorruptRunError:
    """The error for a read that HDF5 refused (a chunk failing its fletcher32 checksum, or a
    damaged chunk index)."""
    key = f" (key {names.key(*_key_of(name))})" if name.startswith("blocks/") else ""
    what = f"example {example}" if example is not None else f"elements {start}..{stop}"
    reason = str(err).split("(")[0].strip() or type(err).__name__
    if "filter" in str(err) or "checksum" in str(err).lower():
        reason = "a chunk fails its checksum"
    return CorruptRunError(f"{path}: cannot read /{name}{key} for {what}: {reason}; the file is "
                           "damaged on disk. `probe verify` lists every damaged chunk; recapture "
                           "the affected examples into a new run")


def _key_of(name: str) -> tuple[int, str]:
    _, layer, _, component = name.split("/")
    return int(layer), component


def index_problem(index: dict, sizes: dict, *, first: dict | None = None) -> str | None:
    """What is wrong with committed index rows (None when nothing): every offset must follow
    from the previous row (the streams are concatenations) and stay within its stream.
    ``first``: the offsets the first of these rows must start at (0 for a whole run)."""
    n = index["n_tokens"].astype(np.int64)
    if not len(n):
        return None
    first = first or dict.fromkeys(("token_start", "square_start", "text_start", "meta_start"), 0)
    if n.min() < 1:
        return f"a row has {n.min()} tokens"
    for name in ("example", "text_len", "meta_len"):
        if index[name].min() < 0:
            return f"/index/{name} holds a negative value"
    for start, step in (("token_start", n), ("square_start", n * n),
                        ("text_start", index["text_len"]), ("meta_start", index["meta_len"])):
        expected = first[start] + np.concatenate([[0], np.cumsum(step.astype(np.int64))[:-1]])
        bad = np.flatnonzero(index[start].astype(np.int64) != expected)
        if len(bad):
            return (f"/index/{start} of row {bad[0]} is {index[start][bad[0]]}, expected "
                    f"{expected[bad[0]]}")
    tokens = int(index["token_start"][-1] + n[-1])
    squares = int(index["square_start"][-1] + n[-1] ** 2)
    ends = {"examples/text": int(index["text_start"][-1] + index["text_len"][-1]),
            "examples/meta": int(index["meta_start"][-1] + index["meta_len"][-1]),
            "tokens/input_ids": tokens, "tokens/end": tokens}
    for name, end in ends.items():
        if name in sizes and end > sizes[name]:
            return f"the rows reach element {end} of /{name}, which holds {sizes[name]}"
    for key, size in sizes.items():
        if isinstance(key, tuple):
            end = tokens if key[0] == "token" else squares
            if end > size:
                return f"the rows reach {key[0]} {end} of {key[1]}, which holds {size}"
    return None


def _attr(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_attr(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def open_run(path, *, layers=None, components=None) -> Run:
    """Open a run file for offline analysis (no model needed).

    >>> import tempfile, os
    >>> from probe import AttentionProbe, load_model, open_run
    >>> model, tokenizer = load_model()
    >>> path = os.path.join(tempfile.mkdtemp(), "run.h5")
    >>> with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
    ...     run = p.run(["A robin is a bird.", "A robin is not a bird."], out=path)
    >>> run.close()
    >>> with open_run(path) as run:
    ...     run[1].tokens[4], run[1]["blocks.3.attn.pattern"].shape
    ('not', (12, 9, 9))
    """
    return Run(path, layers=layers, components=components)


# ------------------------------------------------------------------------- shards
#: settings every shard of one run shares
RUN_IDENTITY = ("model", "model_fingerprint", "keys", "stored_keys", "dtype", "compression",
                "truncate", "batch_size", "window", "input_sha256", "n_examples")


def combine(shards, out, *, allow_incomplete: bool = False) -> None:
    """Join shard files of one run (``probe capture --shard K/N``) into the run file ``out``.

    The index, token and text streams are copied (offsets shifted); the tensors become HDF5
    virtual datasets over the shards' committed extents, so nothing large is copied and
    ``out`` must stay beside the shard files (their paths are stored relative to it).
    """
    out = os.fspath(out)
    if os.path.exists(out):
        raise InputError(f"{out} already exists; probe never overwrites a run")
    if not shards:
        raise InputError("no shard files given")
    parts = [_shard_info(os.fspath(p)) for p in shards]
    first = parts[0]
    for part in parts[1:]:
        diffs = [name for name in RUN_IDENTITY if part["attrs"].get(name) != first["attrs"].get(name)]
        if diffs:
            raise InputError(f"{part['path']} is not a shard of the same run as {first['path']} "
                             f"(differs in {', '.join(diffs)})")
    counts = {p["attrs"].get("shard", "0/1").split("/")[1] for p in parts}
    ks = [p["attrs"].get("shard", "0/1").split("/")[0] for p in parts]
    if len(counts) != 1 or len(set(ks)) != len(ks):
        raise InputError(f"shards must be distinct parts K/N of one split; got "
                         f"{', '.join(p['attrs'].get('shard', '?') for p in parts)}")
    n_total = int(counts.pop())
    unfinished = [p["path"] for p in parts if not p["complete"]]
    if (unfinished or len(parts) != n_total) and not allow_incomplete:
        missing = sorted(set(map(str, range(n_total))) - set(ks))
        raise InputError(f"run is not complete: unfinished shards {unfinished or 'none'}, missing "
                         f"shards {missing or 'none'}; finish them (--resume) or pass "
                         "--allow-incomplete")
    examples = np.concatenate([p["index"]["example"] for p in parts])
    if len(np.unique(examples)) != len(examples):
        raise InputError("shards overlap: some examples appear in more than one shard")

    base = os.path.dirname(os.path.abspath(out))
    real_base = os.path.realpath(base)
    for p in parts:  # open_run reads virtual sources only from the run's own folder
        if os.path.commonpath([os.path.realpath(p["path"]), real_base]) != real_base:
            raise InputError(f"{p['path']} is not in the folder of {out} ({real_base}); the "
                             "combined file reads its tensors from its shards, which must lie in "
                             "its folder: write --out beside the shards")
    _check_free_space(out, _combined_bytes(parts))
    tmp = f"{out}.creating-{os.getpid()}"
    lock = _acquire_lock(out, committed=0, removed=True, resume_hint=False)
    try:
        try:
            _write_combined(tmp, parts, first, unfinished, n_total, base)
            _publish(tmp, out)
        except BaseException as err:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if is_write_failure(err):
                raise write_failed(err, out, None, removed=True, resume_hint=False) from None
            raise
    finally:
        lock.release()


def _combined_bytes(parts) -> int:
    """About what a combined file of ``parts`` takes on disk: its index, token and text
    streams (copied), a margin for checksums and metadata, and the virtual-dataset maps."""
    rows = sum(p["n"] for p in parts)
    tokens = sum(p["extent"]["token"] for p in parts)
    text = sum(p["extent"][name] for p in parts for name in BYTE_STREAMS)
    maps = 4096 * len(parts) * max(len(parts[0]["attrs"].get("stored_keys") or []), 1)
    return int(1.1 * (rows * 60 + tokens * 12 + text)) + maps + (1 << 20)


def _check_free_space(out, need: int) -> None:
    """Refuse before writing when the disk cannot hold ``need`` bytes. A write that fails
    inside h5py's own code (``create_dataset(data=...)``) leaves HDF5 in a state that crashed
    the interpreter here (HDF5 2.0), so a write that can be sized is checked first."""
    folder = os.path.dirname(os.path.abspath(out))
    try:
        stat = os.statvfs(folder)
    except OSError:
        return
    free = stat.f_bavail * stat.f_frsize
    if free < need:
        err = OSError(errno.ENOSPC, "No space left on device")
        raise write_failed(err, out, None, removed=True, resume_hint=False) from None


def _create_checked(f, name, data) -> None:
    """A chunked dataset with fletcher32 checksums holding ``data`` (1-D)."""
    chunk = int(np.clip(data.shape[0], 1, 1 << 16))
    f.create_dataset(name, data=data, maxshape=(None,), chunks=(chunk,), fletcher32=True)


def _write_combined(tmp, parts, first, unfinished, n_total, base) -> None:
    """Write the combined file at ``tmp`` (``combine`` links it into place); a write the OS
    refuses detaches the file before closing it (see :func:`_detach`)."""
    with _quiet_failed_closes():
        f = h5py.File(tmp, "w-", libver="latest")
        try:
            _fill_combined(f, parts, first, unfinished, n_total, base)
            f.close()
        except BaseException:
            _close_after_failure(f)
            raise


def _fill_combined(f, parts, first, unfinished, n_total, base) -> None:
    for k, v in first["attrs"].items():
        f.attrs[k] = _attr_value(v)
    f.attrs["shard"] = "combined"
    rels = [os.path.relpath(os.path.abspath(p["path"]), base) for p in parts]
    f.attrs["shards"] = _attr_value(rels)
    # checked at every open: the shards beside the file must still be these
    f.attrs["shard_ids"] = json.dumps({rel: p["identity"] for rel, p in zip(rels, parts)})
    f.attrs["run_id"] = uuid.uuid4().hex
    f.attrs["created"] = utc_now()
    n_rows = sum(p["n"] for p in parts)
    f.create_dataset("state/n_done", data=np.array([n_rows], np.int64))
    complete = not unfinished and len(parts) == n_total
    f.create_dataset("state/complete", data=np.array([int(complete)], np.int8))
    shift = {"token": 0, "square": 0, "examples/text": 0, "examples/meta": 0, "tokens/text": 0}
    index = {name: [] for name in INDEX_FIELDS}
    streams = {name: [] for name in (*BYTE_STREAMS, "tokens/input_ids", "tokens/end")}
    for p in parts:
        ix = p["index"]
        for name in INDEX_FIELDS:
            values = ix[name].astype(np.int64)
            offset = {"token_start": shift["token"], "square_start": shift["square"],
                      "text_start": shift["examples/text"],
                      "meta_start": shift["examples/meta"]}.get(name, 0)
            index[name].append(values + offset)
        with open_file(p["path"]) as g:
            for name in BYTE_STREAMS:
                streams[name].append(g[name][: p["extent"][name]])
            streams["tokens/input_ids"].append(g["tokens/input_ids"][: p["extent"]["token"]])
            streams["tokens/end"].append(g["tokens/end"][: p["extent"]["token"]]
                                         + shift["tokens/text"])
        for name in shift:
            shift[name] += p["extent"][name]
    for name in INDEX_FIELDS:
        _create_checked(f, f"index/{name}", np.concatenate(index[name]).astype(
            np.int32 if name == "n_tokens" else np.int64))
    for name, chunks in streams.items():
        _create_checked(f, name, np.concatenate(chunks))
    for key in first["attrs"]["stored_keys"]:
        path = dataset_path(key)
        sizes, unit, per_unit = first["layout"][key]
        lengths = [p["extent"][unit] * per_unit for p in parts]
        layout = h5py.VirtualLayout(shape=(sum(lengths),), dtype=DTYPES[first["attrs"]["dtype"]])
        at = 0
        for p, length in zip(parts, lengths):
            if length:
                rel = os.path.relpath(os.path.abspath(p["path"]), base)
                layout[at:at + length] = h5py.VirtualSource(rel, path, shape=(p["full"][key],))[:length]
            at += length
        ds = f.create_virtual_dataset(path, layout, fillvalue=np.nan)
        _write_layout(ds, names.parse_key(key)[1], sizes, per_unit)


def _shard_info(path: str) -> dict:
    with open_file(path) as f:
        check_schema(f, path)
        _outside_refs(f, path, allow_virtual=False)
        n = int(f["state/n_done"][0])
        index = {name: f[f"index/{name}"][:n] for name in INDEX_FIELDS}
        info = {"path": path, "n": n, "complete": bool(f["state/complete"][0]), "index": index,
                "attrs": {k: _attr(v) for k, v in f.attrs.items()}, "layout": {}, "full": {},
                "identity": _shard_identity(f, n)}
        info["extent"] = _committed_extent(f, n)
        for key in info["attrs"]["stored_keys"]:
            ds = f[dataset_path(key)]
            unit, per_unit, sizes = _layout(ds)
            info["layout"][key] = (sizes, unit, per_unit)
            info["full"][key] = ds.shape[0]
    return info
