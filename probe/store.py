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

import ctypes
import glob
import hashlib
import json
import os
import uuid
from collections.abc import Sequence

import h5py
import numpy as np

from . import names
from .attention import value_weighted
from .captures import Capture, CapturedBatch, Example, KeyedSequence
from .errors import InputError, ProbeError
from .lock import WriterLock, locked_error

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

    walk(f, "")
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

    def __init__(self, f: h5py.File, dtype: str, lock: WriterLock | None = None):
        self.f = f
        self.lock = lock  # held from creation or reopening until close()
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
        comp = compression_args(compression)
        # built under a temporary name and linked into place once in SWMR mode, so a crash
        # during creation never leaves a half-made run at `path`
        final, path = os.fspath(path), f"{os.fspath(path)}.creating-{os.getpid()}"
        lock = WriterLock(final).acquire()
        try:
            f = h5py.File(path, "w-", libver="latest")
        except BaseException:
            lock.release()
            raise
        try:
            for k, v in attrs.items():
                f.attrs[k] = _attr_value(v)
            f.attrs["run_id"] = uuid.uuid4().hex  # what a combined run checks its shards by
            f.attrs["schema"] = SCHEMA
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.create_dataset("state/n_done", data=np.zeros(1, np.int64))
            f.create_dataset("state/complete", data=np.zeros(1, np.int8))
            for name in INDEX_FIELDS:
                f.create_dataset(f"index/{name}", shape=(0,), maxshape=(None,),
                                 dtype=np.int32 if name == "n_tokens" else np.int64,
                                 chunks=(1 << 11,))
            for name in BYTE_STREAMS:
                f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.uint8,
                                 chunks=(1 << 13,))
            f.create_dataset("tokens/input_ids", shape=(0,), maxshape=(None,), dtype=np.int32,
                             chunks=(1 << 12,))
            f.create_dataset("tokens/end", shape=(0,), maxshape=(None,), dtype=np.int64,
                             chunks=(1 << 12,))
            for key, sizes in key_specs.items():
                _, component = names.parse_key(key)
                per_unit = int(np.prod([s for s in sizes if s]))
                per_example = per_unit * TYPICAL_TOKENS ** (2 if unit_of(component) == "square" else 1)
                chunk = 1 << int(np.ceil(np.log2(max(n_examples * per_example / 64, 1))))
                chunk = int(np.clip(chunk, MIN_CHUNK_ELEMENTS, CHUNK_ELEMENTS))
                ds = f.create_dataset(dataset_path(key), shape=(0,), maxshape=(None,),
                                      dtype=DTYPES[dtype], chunks=(chunk,), **comp)
                _write_layout(ds, component, sizes, per_unit)
            f.flush()
            f.swmr_mode = True
            _publish(path, final)
        except BaseException:
            f.close()
            if os.path.exists(path):
                os.unlink(path)
            lock.release()
            raise
        return cls(f, dtype, lock)

    @classmethod
    def reopen(cls, path, *, dtype: str):
        """Reopen an unfinished run for appending; rows past the last commit are dropped."""
        lock = WriterLock(path).acquire()  # before anything touches the file (flags, rows)
        f = None
        try:
            f = open_file(path, writable=True)
            check_schema(f, path)
            check_contents(f, path)
            writer = cls(f, dtype, lock)
            writer._truncate_to_commit()
            f.flush()
            if not f.swmr_mode:
                f.swmr_mode = True
        except BaseException:
            if f is not None and f.id.valid:
                f.close()
            lock.release()
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
        # commit: only now does the batch count
        self.n_done += len(rows)
        D["state/n_done"][0] = self.n_done
        f.flush()
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

    def finish(self) -> None:
        self.f["state/complete"][0] = 1
        self.f.flush()

    def close(self) -> None:
        try:
            if self.f.id.valid:
                self.f.close()
        finally:
            if self.lock is not None:
                self.lock.release()


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
        if f.swmr_mode:
            for ds in [f["state/n_done"], f["state/complete"], *[f[f"index/{n}"] for n in INDEX_FIELDS]]:
                ds.refresh()
        self.n_done = int(f["state/n_done"][0])
        self.complete = bool(f["state/complete"][0])
        self.index = {name: f[f"index/{name}"][: self.n_done] for name in INDEX_FIELDS}
        self._order = np.argsort(self.index["example"], kind="stable")

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

    def _read(self, name, start, stop):
        """``ds[start:stop]`` through h5py's low-level read (a fifth of the Python cost)."""
        ds = self._dataset(name)[0]
        count = int(stop) - int(start)
        out = np.empty(count, dtype=ds.dtype)
        if count:
            file_space = ds.id.get_space()
            file_space.select_hyperslab((int(start),), (count,))
            ds.id.read(h5py.h5s.create_simple((count,)), file_space, out)
        return out

    def _example(self, row: int) -> Example:
        ix = {name: int(self.index[name][row]) for name in INDEX_FIELDS}
        n = ix["n_tokens"]
        t0 = ix["token_start"]
        ends = self._read("tokens/end", max(t0 - 1, 0), t0 + n)
        if t0 == 0:
            ends = np.concatenate([[0], ends])
        raw = self._read("tokens/text", int(ends[0]), int(ends[-1])).tobytes()
        local = ends - ends[0]
        tokens = [raw[local[j]:local[j + 1]].decode("utf-8") for j in range(n)]
        text = self._read("examples/text", ix["text_start"],
                          ix["text_start"] + ix["text_len"]).tobytes().decode("utf-8")
        meta = json.loads(self._read("examples/meta", ix["meta_start"],
                                     ix["meta_start"] + ix["meta_len"]).tobytes().decode("utf-8"))
        input_ids = self._read("tokens/input_ids", t0, t0 + n)
        starts = {"token": t0, "square": ix["square_start"]}

        def get(key):
            name = dataset_path(key)
            _, unit, per_unit, sizes = self._dataset(name)
            units = n if unit == "token" else n * n
            start = starts[unit] * per_unit
            flat = self._read(name, start, start + units * per_unit)
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
        return [json.loads(raw[start[r]:start[r] + length[r]].decode("utf-8")) for r in self._order]

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
    tmp = f"{out}.creating-{os.getpid()}"
    with WriterLock(out):
        try:
            _write_combined(tmp, parts, first, unfinished, n_total, base)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        _publish(tmp, out)


def _write_combined(tmp, parts, first, unfinished, n_total, base) -> None:
    with h5py.File(tmp, "w-", libver="latest") as f:
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
            f.create_dataset(f"index/{name}", data=np.concatenate(index[name]).astype(
                np.int32 if name == "n_tokens" else np.int64))
        for name, chunks in streams.items():
            f.create_dataset(name, data=np.concatenate(chunks))
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
