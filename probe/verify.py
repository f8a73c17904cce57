"""`probe verify RUN`: read every stored byte of a run and check that its index holds together.

Every data dataset of a run written by this probe carries HDF5's fletcher32 checksum per
chunk, so reading a chunk proves it is the chunk that was written. ``verify`` reads each
dataset chunk by chunk (memory stays at one chunk, or one block of index rows), and checks:

- the required datasets exist and the tensors listed in ``stored_keys`` are there;
- ``/state/n_done`` lies within every index dataset, ``/state/complete`` is 0 or 1;
- every offset follows from the row before it (the streams are concatenations) and stays
  within its stream; token ends increase; example indices are in the input's range, once each;
- every text and token string is UTF-8, every metadata record a UTF-8 JSON object.

A run written before checksums still verifies (its index and decoding are checked; the report
says its chunks carry no checksums). A combined view's tensors are virtual: they are checked in
its shard files, which ``verify`` checks as well.

Imports h5py, numpy, :mod:`probe.store.attrs`, :mod:`probe.store.files` and
:mod:`probe.store.layout`.

>>> import os, tempfile
>>> from probe import AttentionProbe, load_model
>>> path = os.path.join(tempfile.mkdtemp(), "run.h5")
>>> with AttentionProbe(*load_model(), keys=["pattern"]) as p:
...     p.run_to_file(["A robin is a bird."], path).close()
>>> report = verify_run(path)
>>> report.ok, report.checksummed == report.datasets
(True, True)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from .store.files import check_schema, open_file
from .store.layout import (INDEX_FIELDS, REQUIRED, committed_extent, dataset_path, index_problem,
                           key_of, stored_keys)
from .store.attrs import read_attr

ROW_BLOCK = 1 << 14  # index rows checked at a time
READ_BLOCK = 1 << 20  # elements read at a time from a dataset that is not chunked
MAX_LISTED = 50


@dataclass
class VerifyReport:
    """What :func:`verify_run` found. ``problems``: damage, one line each (empty when sound)."""

    path: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rows: int = 0
    complete: bool = False
    datasets: int = 0
    checksummed: int = 0
    chunks: int = 0
    bytes_read: int = 0
    shards: list[VerifyReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(s.ok for s in self.shards)

    def format(self) -> str:
        state = "complete" if self.complete else "incomplete"
        head = (f"{self.path}: {'OK' if self.ok else 'DAMAGED'}: {self.rows} examples ({state}); "
                f"{self.datasets} datasets, {self.chunks} chunks, {self.bytes_read / 1e6:.1f} MB "
                f"read; checksums on {self.checksummed} of {self.datasets} datasets")
        lines = [head]
        for problem in self.problems[:MAX_LISTED]:
            lines.append(f"  damage: {problem}")
        if len(self.problems) > MAX_LISTED:
            lines.append(f"  ... and {len(self.problems) - MAX_LISTED} more")
        lines += [f"  note: {note}" for note in self.notes]
        for shard in self.shards:
            lines += ["  " + line for line in shard.format().splitlines()]
        return "\n".join(lines)


def verify_run(path) -> VerifyReport:
    """Check every chunk and the index of the run file ``path`` (see the module docstring)."""
    path = os.fspath(path)
    report = VerifyReport(path)
    with open_file(path) as f:
        check_schema(f, path)
        _check(f, report)
        if f.attrs.get("shard") == "combined":
            folder = os.path.dirname(os.path.abspath(path))
            for rel in read_attr(f.attrs.get("shards")) or []:
                shard = os.path.join(folder, rel)
                if os.path.isfile(shard):
                    report.shards.append(verify_run(shard))
                else:
                    report.problems.append(f"shard {rel} is missing")
    return report


def _check(f: h5py.File, report: VerifyReport) -> None:
    missing = [name for name in REQUIRED if not isinstance(f.get(name), h5py.Dataset)]
    keys = [str(k) for k in (read_attr(f.attrs.get("stored_keys")) or [])]
    missing += [dataset_path(k) for k in keys if not isinstance(f.get(dataset_path(k)), h5py.Dataset)]
    for name in missing:
        report.problems.append(f"/{name} is missing")
    present = [name for name in (*REQUIRED, *[dataset_path(k) for k in stored_keys(f)])
               if name not in missing and isinstance(f.get(name), h5py.Dataset)
               and not name.startswith("state/")]
    n_done = None
    if "state/n_done" not in missing and "state/complete" not in missing:
        n_done, _ = _state(f, report, missing)
    report.rows = n_done or 0
    index_ok = n_done is not None and not missing  # offsets point into every stream
    damaged = {}
    for name in present:  # the index first: it says how far the committed data reaches
        if name.startswith("index/"):
            damaged[name] = _read_chunks(f[name], name, report, n_done if index_ok else None)
    index_ok = index_ok and not any(damaged.values())
    limits = _committed_limits(f, n_done) if index_ok else {}
    for name in present:
        if not name.startswith("index/"):
            damaged[name] = _read_chunks(f[name], name, report, limits.get(name))
    beyond = sum(max(f[name].shape[0] - limit, 0) for name, limit in limits.items())
    if beyond:
        report.notes.append(f"{beyond} elements past the last commit were not checked (left by "
                            "an interrupted batch; --resume drops them)")
    if n_done is None or not index_ok:
        if n_done is not None and any(damaged.values()):
            report.problems.append("the index cannot be checked: its own chunks are damaged")
        return
    _check_rows(f, n_done, report, missing, damaged)
    unchecked = report.datasets - report.checksummed
    if unchecked:
        report.notes.append(f"{unchecked} datasets carry no checksums (a run written before "
                            "probe stored fletcher32 checksums, or a combined run's virtual "
                            "tensors, checked in its shards): their bytes cannot be proven "
                            "intact; the index and text were checked")


def _state(f, report, missing):
    try:
        n_done = int(f["state/n_done"][0])
        complete = int(f["state/complete"][0])
    except (OSError, ValueError, IndexError) as err:
        report.problems.append(f"/state cannot be read ({str(err).split('(')[0].strip()})")
        return None, 0
    report.complete = complete == 1
    if complete not in (0, 1):
        report.problems.append(f"/state/complete is {complete}, not 0 or 1")
    rows = min(f[f"index/{n}"].shape[0] for n in INDEX_FIELDS if f"index/{n}" not in missing)
    if not 0 <= n_done <= rows:
        report.problems.append(f"/state/n_done is {n_done}, outside 0..{rows} (the rows the index "
                               "holds)")
        return None, rows
    n_examples = f.attrs.get("n_examples")
    if complete == 1 and f.attrs.get("shard") in ("0/1", None) and n_examples is not None \
            and n_done != int(n_examples):
        report.problems.append(f"the run is marked complete with {n_done} rows, but the input "
                               f"has {int(n_examples)} examples")
    return n_done, rows


def _committed_limits(f, n_done: int) -> dict[str, int]:
    """How many elements of each dataset the committed rows reach."""
    try:
        extent = committed_extent(f, n_done)
    except Exception:  # a damaged tail: read everything instead
        return {}
    limits = {f"index/{n}": n_done for n in INDEX_FIELDS}
    limits.update({name: extent[name] for name in ("examples/text", "examples/meta", "tokens/text")})
    limits["tokens/input_ids"] = limits["tokens/end"] = extent["token"]
    for key in stored_keys(f):
        ds = f[dataset_path(key)]
        limits[dataset_path(key)] = extent[str(read_attr(ds.attrs["unit"]))] * int(ds.attrs["per_unit"])
    return limits


def _read_chunks(ds: h5py.Dataset, name: str, report: VerifyReport, limit=None) -> bool:
    """Read ``ds`` (up to ``limit`` elements) chunk by chunk, or block by block when not
    chunked; True if any part failed."""
    report.datasets += 1
    if ds.is_virtual:
        return False  # its bytes live in the shards, verified on their own
    plist = ds.id.get_create_plist()
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if h5py.h5z.FILTER_FLETCHER32 in filters:
        report.checksummed += 1
    length = ds.shape[0] if ds.shape else 1
    if limit is not None:
        length = min(length, int(limit))
    step = ds.chunks[0] if ds.chunks else READ_BLOCK
    bad = False
    for start in range(0, length, step):
        stop = min(start + step, length)
        try:
            block = ds[start:stop] if ds.shape else ds[()]
            report.bytes_read += np.asarray(block).nbytes
        except (OSError, ValueError, RuntimeError) as err:
            bad = True
            reason = "fails its checksum" if "filter" in str(err) else str(err).split("(")[0].strip()
            where = f"elements {start}..{stop}"
            if name.startswith("blocks/"):
                where += f" (key blocks.{key_of(name)[0]}.attn.{key_of(name)[1]})"
            report.problems.append(f"/{name} {where} {reason}")
        if ds.chunks:
            report.chunks += 1
    return bad


def _check_rows(f, n_done, report, missing, damaged) -> None:
    """The index rows, in blocks: offsets, extents, example range, UTF-8 and JSON."""
    sizes = {name: f[name].shape[0] for name in ("examples/text", "examples/meta", "tokens/text",
                                                 "tokens/input_ids", "tokens/end")
             if name not in missing}
    for key in stored_keys(f):
        ds = f[dataset_path(key)]
        sizes[(str(read_attr(ds.attrs["unit"])), key)] = ds.shape[0] // max(int(ds.attrs["per_unit"]), 1)
    n_examples = int(f.attrs.get("n_examples", 0) or 0)
    seen = np.zeros(n_examples, bool) if n_examples else None
    first = dict.fromkeys(("token_start", "square_start", "text_start", "meta_start"), 0)
    for a in range(0, n_done, ROW_BLOCK):
        b = min(a + ROW_BLOCK, n_done)
        ix = {name: f[f"index/{name}"][a:b] for name in INDEX_FIELDS}
        problem = index_problem(ix, sizes, first=first)
        if problem:
            report.problems.append(f"index rows {a}..{b}: {problem}")
            return
        n = ix["n_tokens"].astype(np.int64)
        first = {"token_start": int(ix["token_start"][-1] + n[-1]),
                 "square_start": int(ix["square_start"][-1] + n[-1] ** 2),
                 "text_start": int(ix["text_start"][-1] + ix["text_len"][-1]),
                 "meta_start": int(ix["meta_start"][-1] + ix["meta_len"][-1])}
        if seen is not None:
            ex = ix["example"]
            if ex.max() >= n_examples:
                report.problems.append(f"index rows {a}..{b}: an example index reaches "
                                       f"{int(ex.max())}, beyond the input's {n_examples}")
                return
            if seen[ex].any() or len(np.unique(ex)) != len(ex):
                report.problems.append(f"index rows {a}..{b}: an example is stored twice")
            seen[ex] = True
        _check_strings(f, ix, a, report, damaged)


def _check_strings(f, ix, a, report, damaged) -> None:
    def stream(name, start, stop):
        return f[name][int(start):int(stop)].tobytes()

    if not damaged.get("examples/text") and not damaged.get("examples/meta"):
        texts = stream("examples/text", ix["text_start"][0], ix["text_start"][-1] + ix["text_len"][-1])
        metas = stream("examples/meta", ix["meta_start"][0], ix["meta_start"][-1] + ix["meta_len"][-1])
        t0, m0 = int(ix["text_start"][0]), int(ix["meta_start"][0])
        for r in range(len(ix["example"])):
            example = int(ix["example"][r])
            ts, tl = int(ix["text_start"][r]) - t0, int(ix["text_len"][r])
            ms, ml = int(ix["meta_start"][r]) - m0, int(ix["meta_len"][r])
            try:
                texts[ts:ts + tl].decode("utf-8")
            except UnicodeDecodeError:
                report.problems.append(f"the text of example {example} (row {a + r}) is not UTF-8")
            try:
                meta = json.loads(metas[ms:ms + ml].decode("utf-8"))
                if not isinstance(meta, dict):
                    raise ValueError("not a JSON object")
            except (UnicodeDecodeError, ValueError) as err:
                report.problems.append(f"the metadata of example {example} (row {a + r}) is not "
                                       f"a UTF-8 JSON object ({err})")
    if damaged.get("tokens/end") or damaged.get("tokens/text"):
        return
    t_first = int(ix["token_start"][0])
    t_last = int(ix["token_start"][-1] + ix["n_tokens"][-1])
    ends = f["tokens/end"][max(t_first - 1, 0):t_last].astype(np.int64)
    if t_first == 0:
        ends = np.concatenate([[0], ends])
    if np.any(np.diff(ends) < 0) or ends[-1] > f["tokens/text"].shape[0]:
        report.problems.append(f"index rows from {a}: /tokens/end does not increase within "
                               "/tokens/text")
        return
    raw = stream("tokens/text", ends[0], ends[-1])
    local = ends - ends[0]
    for j in range(len(local) - 1):
        try:
            raw[local[j]:local[j + 1]].decode("utf-8")
        except UnicodeDecodeError:
            report.problems.append(f"token {t_first + j} is not UTF-8")
            return


def add_verify_parser(subparsers) -> None:
    """Add ``probe verify RUN`` to the CLI's subparsers."""
    sp = subparsers.add_parser(
        "verify", help="read every chunk of a run file (checksums) and check its index; exit "
        "code 0 when sound, 1 when damaged")
    sp.add_argument("run", help="a run file written by probe capture, negation or combine")
    sp.set_defaults(func=cmd_verify)


def cmd_verify(args) -> int:
    report = verify_run(args.run)
    print(report.format())
    return 0 if report.ok else 1
