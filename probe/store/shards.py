"""Combining shard files (``probe capture --shard K/N``) into one run: :func:`combine`.

One job: join the shards of one split. The index, token and text streams are copied with their
offsets shifted; the tensors become HDF5 virtual datasets over the shards' committed extents (a
view: nothing large is copied), or with ``copy=True`` are copied too, block by block, into one
self-contained file. Imports h5py, numpy, :mod:`probe.names`, :mod:`probe.errors` and, of the
store, ``layout`` (what a run holds and which settings its shards share), ``tensors``,
``attrs``, ``files`` and ``errors``; it needs neither the reader nor the writer.
"""

from __future__ import annotations

import errno
import json
import os
import uuid

import h5py
import numpy as np

from .. import names
from ..errors import InputError
from .errors import close_after_failure, is_write_failure, quiet_failed_closes, write_failed
from .files import (acquire_lock, check_schema, create_streams, create_tensor, extend, open_file,
                    outside_refs, publish, shard_identity)
from .layout import (BYTE_STREAMS, INDEX_FIELDS, OFFSETS, RUN_IDENTITY, STATE,
                     committed_extent, dataset_path, differing_settings, utc_now)
from .tensors import CHUNK_CACHE, DTYPES, FILL, UNITS, tensor_attrs, write_tensor_attrs
from .attrs import read_attr, to_attr

#: elements read and written at a time while copying (4 MiB of float32): what a copy holds in
#: memory besides the shards' index rows
COPY_BLOCK = 1 << 20


def combine(shards, out, *, allow_incomplete: bool = False, copy: bool = False) -> None:
    """Join shard files of one run (``probe capture --shard K/N``) into the run file ``out``.

    The index, token and text streams are copied (offsets shifted); the tensors become HDF5
    virtual datasets over the shards' committed extents, so nothing large is copied and
    ``out`` must stay beside the shard files (their paths are stored relative to it).

    ``copy=True`` copies the tensors too, :data:`COPY_BLOCK` elements at a time, into
    checksummed datasets chunked like a run written in one piece: ``out`` is self-contained
    (no virtual datasets, no shard paths; it may be written anywhere) and holds the same
    values as the view. Memory: the shards' index rows (64 bytes an example) and one block.
    """
    out = os.fspath(out)
    if os.path.exists(out):
        raise InputError(f"{out} already exists; probe never overwrites a run")
    if not shards:
        raise InputError("no shard files given")
    parts = [_shard_info(os.fspath(p)) for p in shards]
    first = parts[0]
    for part in parts[1:]:
        diffs = differing_settings(part["attrs"], first["attrs"], RUN_IDENTITY)
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
    _write(out, parts, complete=not unfinished and len(parts) == n_total, copy=copy)


def _write(out: str, parts: list[dict], *, complete: bool, copy: bool) -> None:
    """Write the combined file under a temporary name and link it into place; a write the OS
    refuses detaches the file before closing it (see :func:`~probe.store.errors.detach`) and
    removes the partial file."""
    base = os.path.dirname(os.path.abspath(out))
    real_base = os.path.realpath(base)
    for p in parts if not copy else []:  # open_run reads virtual sources only from the run's folder
        if os.path.commonpath([os.path.realpath(p["path"]), real_base]) != real_base:
            raise InputError(f"{p['path']} is not in the folder of {out} ({real_base}); the "
                             "combined file reads its tensors from its shards, which must lie in "
                             "its folder: write --out beside the shards, or pass --copy")
    _check_free_space(out, _combined_bytes(parts, copy))
    tmp = f"{out}.creating-{os.getpid()}"
    lock = acquire_lock(out, committed=0, removed=True, resume_hint=False)
    try:
        try:
            with quiet_failed_closes():
                f = h5py.File(tmp, "w-", libver="latest", **CHUNK_CACHE)
                try:
                    _fill(f, parts, complete, base, copy)
                    f.close()
                except BaseException:
                    close_after_failure(f)
                    raise
            publish(tmp, out)
        except BaseException as err:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if is_write_failure(err):
                raise write_failed(err, out, None, removed=True, resume_hint=False) from None
            raise
    finally:
        lock.release()


def _combined_bytes(parts, copy: bool) -> int:
    """About what a combined file of ``parts`` takes on disk: its index, token and text
    streams (copied), a margin for checksums and metadata, and the virtual-dataset maps, or
    with ``copy`` the tensors (uncompressed: an upper bound for a compressed run)."""
    rows = sum(p["n"] for p in parts)
    tokens = sum(p["extent"]["token"] for p in parts)
    text = sum(p["extent"][name] for p in parts for name in BYTE_STREAMS)
    keys = parts[0]["attrs"].get("stored_keys") or []
    if copy:
        itemsize = np.dtype(DTYPES[parts[0]["attrs"]["dtype"]]).itemsize
        tensors = sum(sum(_lengths(parts, key)) * itemsize for key in keys)
        return int(1.1 * (rows * 60 + tokens * 12 + text + tensors)) + (1 << 20)
    maps = 4096 * len(parts) * max(len(keys), 1)
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


def _fill(f: h5py.File, parts: list[dict], complete: bool, base: str, copy: bool) -> None:
    """Every attribute and dataset of the combined run (tensors as virtual datasets, or with
    ``copy`` as datasets of their own)."""
    first = parts[0]
    for k, v in first["attrs"].items():
        f.attrs[k] = to_attr(v)
    f.attrs["shard"] = "combined"
    rels = [os.path.relpath(os.path.abspath(p["path"]), base) for p in parts]
    if not copy:
        f.attrs["shards"] = to_attr(rels)
        # checked at every open: the shards beside the file must still be these
        f.attrs["shard_ids"] = json.dumps({rel: p["identity"] for rel, p in zip(rels, parts)})
    f.attrs["run_id"] = uuid.uuid4().hex
    f.attrs["created"] = utc_now()
    state = {"state/n_done": sum(p["n"] for p in parts), "state/complete": int(complete)}
    for name, value in state.items():
        f.create_dataset(name, data=np.array([value], STATE[name]))
    _copy_streams(f, parts)
    dtype, keys = first["attrs"]["dtype"], first["attrs"]["stored_keys"]
    if not copy:
        for key in keys:
            _virtual_tensor(f, parts, rels, key, dtype)
        return
    # one tensor at a time, its handle dropped after: HDF5 (2.0) gives every open dataset a
    # chunk cache of up to 8 MiB, which all tensors held open at once would fill (measured)
    # chunks sized as the capture sized them: from the input's mean tokens and tokens squared,
    # which for a complete run are those of the rows
    n = np.concatenate([p["index"]["n_tokens"] for p in parts]).astype(np.int64)
    typical = (int(n.sum()) / len(n), int((n * n).sum()) / len(n)) if len(n) else None
    for key in keys:
        sizes, unit, _ = first["layout"][key]
        ds = create_tensor(f, key, sizes, unit=unit, dtype=dtype,
                           compression=first["attrs"]["compression"],
                           n_examples=int(first["attrs"]["n_examples"]), typical=typical)
        for p, length in zip(parts, _lengths(parts, key)):
            with open_file(p["path"]) as g:
                _copy_blocks(g[dataset_path(key)], ds, length)
        del ds


def _lengths(parts: list[dict], key: str) -> list[int]:
    """How many committed elements of ``key`` each shard holds."""
    _, unit, per_unit = parts[0]["layout"][key]
    return [p["extent"][unit] * per_unit for p in parts]


def _virtual_tensor(f: h5py.File, parts: list[dict], rels: list[str], key: str, dtype: str) -> None:
    """The tensor ``key`` as a virtual dataset over the shards' committed extents."""
    path = dataset_path(key)
    lengths = _lengths(parts, key)
    layout = h5py.VirtualLayout(shape=(sum(lengths),), dtype=DTYPES[dtype])
    at = 0
    for p, rel, length in zip(parts, rels, lengths):
        if length:
            layout[at:at + length] = h5py.VirtualSource(rel, path, shape=(p["full"][key],))[:length]
        at += length
    ds = f.create_virtual_dataset(path, layout, fillvalue=FILL[dtype])
    sizes, unit, per_unit = parts[0]["layout"][key]
    write_tensor_attrs(ds, names.parse_key(key)[1], sizes, per_unit, dtype, unit)


def _copy_streams(f: h5py.File, parts: list[dict]) -> None:
    """The shards' committed index rows and token and text streams, appended in shard order,
    with every offset shifted by what the shards before hold."""
    create_streams(f)
    shift = dict.fromkeys((*UNITS, *BYTE_STREAMS), 0)
    for p in parts:
        for name in INDEX_FIELDS:
            offset = shift[OFFSETS[name]] if name in OFFSETS else 0
            rows = p["index"][name]
            _copy_blocks(rows, f[f"index/{name}"], len(rows), offset)
        with open_file(p["path"]) as g:
            for name in BYTE_STREAMS:
                _copy_blocks(g[name], f[name], p["extent"][name])
            _copy_blocks(g["tokens/input_ids"], f["tokens/input_ids"], p["extent"]["token"])
            _copy_blocks(g["tokens/end"], f["tokens/end"], p["extent"]["token"],
                         shift["tokens/text"])
        for name in shift:
            shift[name] += p["extent"][name]


def _copy_blocks(src, dst: h5py.Dataset, length: int, shift: int = 0) -> None:
    """Append ``src[:length]`` (plus ``shift``) to ``dst``, :data:`COPY_BLOCK` elements at a
    time, so memory holds one block whatever the size of the data."""
    for start in range(0, length, COPY_BLOCK):
        block = src[start:min(start + COPY_BLOCK, length)]
        extend(dst, block + shift if shift else block)


def _shard_info(path: str) -> dict:
    """What ``combine`` needs of one shard: its settings, committed index rows and extent,
    tensor layouts, and the identity the combined run records."""
    with open_file(path) as f:
        check_schema(f, path)
        outside_refs(f, path, allow_virtual=False)
        n = int(f["state/n_done"][0])
        index = {name: f[f"index/{name}"][:n] for name in INDEX_FIELDS}
        info = {"path": path, "n": n, "complete": bool(f["state/complete"][0]), "index": index,
                "attrs": {k: read_attr(v) for k, v in f.attrs.items()}, "layout": {}, "full": {},
                "identity": shard_identity(f, n), "extent": committed_extent(f, n)}
        for key in info["attrs"]["stored_keys"]:
            ds = f[dataset_path(key)]
            unit, per_unit, sizes = tensor_attrs(ds)
            info["layout"][key] = (sizes, unit, per_unit)
            info["full"][key] = ds.shape[0]
    return info
