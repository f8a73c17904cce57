"""Reading run files: :func:`open_run` and :class:`Run`, a lazy view of a run with the
interface of a live capture, and the checks that turn a damaged file into one clear
:class:`~probe.store.errors.CorruptRunError`.

One job: read rows out of the layout of :mod:`probe.store.layout` (deriving ``value_weighted``
on load is the Example's; the reader computes nothing). Imports h5py, numpy,
:mod:`probe.names`, :mod:`probe.captures` and, of the store, ``layout``, ``tensors``,
``attrs``, ``files`` (safe opening) and ``errors``; never the writer.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

import h5py
import numpy as np

from .. import names
from ..captures import Capture, Example, KeyedSequence, example_number
from .errors import CorruptRunError
from .files import check_contents, check_schema, open_file
from .layout import (INDEX_FIELDS, REQUIRED, STREAMS, dataset_path, index_problem, key_of,
                     read_head_map, stored_keys)
from .tensors import (above_diagonal, decode_bfloat16, is_bfloat16, tensor_attrs, unit_starts,
                      units_of, unpack_triangles)
from .attrs import read_attr


class Run(KeyedSequence):
    """A run file opened lazily, with the interface of a live :class:`~probe.captures.Capture`.

    ``run[i]`` is the i-th committed example in input order (``ex.index`` is its input
    index); tensors are read from disk when indexed and returned as float32 numpy arrays
    (stored float16 is widened, stored bfloat16 bit patterns decoded exactly, packed
    triangles of causal layers returned as their full squares). ``run.heads``
    and ``run.kv_heads`` map each layer to the model heads its head axes hold (a run captured
    with a head selection holds only those). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path, *, layers=None, components=None):
        self.path = os.fspath(path)
        self.f = open_file(self.path)
        self._data = _Datasets(self.f, self.path)
        try:
            check_schema(self.f, self.path)
            check_contents(self.f, self.path)
            self.attrs = {k: read_attr(v) for k, v in self.f.attrs.items()}
            self.refresh()
        except BaseException:
            self.f.close()
            raise
        self.keys = tuple(self.attrs["keys"])
        #: per layer, ``(query heads, kv heads)`` the head axes hold (see ``Run.heads``)
        self.head_map = read_head_map(self.attrs, {
            key: self._data.entry(dataset_path(key))[3] for key in stored_keys(self.f)})
        if layers is not None or components is not None:
            self.keys = self.select(layers=layers, components=components).keys

    def refresh(self) -> None:
        """Re-read the commit state (for a run still being written)."""
        self.n_done, self.complete, self.index = _load_index(self._data, self.attrs)
        self._order = np.argsort(self.index["example"], kind="stable")

    def __len__(self) -> int:
        return self.n_done

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Capture([self[j] for j in range(*i.indices(len(self)))], self.keys,
                           head_map=self.head_map)
        row = int(self._order[example_number(i, len(self))])
        return _example(self._data, {name: int(self.index[name][row]) for name in INDEX_FIELDS},
                        self.keys, self.head_map)

    def metas(self) -> list[dict]:
        """Every committed example's metadata in input order, from one read of the metadata
        stream (no tokens or tensors are read)."""
        if not self.n_done:
            return []
        start, length = self.index["meta_start"], self.index["meta_len"]
        raw = self._data.read("examples/meta", 0, int(start[-1] + length[-1])).tobytes()
        return [decode_meta(raw[start[r]:start[r] + length[r]], self.path,
                            int(self.index["example"][r])) for r in self._order]

    def select(self, *, layers=None, components=None) -> Capture:
        """A lazy view with only the given layers and components (as ``Capture.select``)."""
        return Capture(_LazyExamples(self), self.keys, head_map=self.head_map).select(layers=layers, components=components)

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


class _Datasets:
    """A run's datasets, each looked up once (h5py lookups of groups and attributes cost
    more than the reads of one example), read through h5py's low-level API."""

    def __init__(self, f: h5py.File, path: str):
        self.f, self.path = f, path
        self._handles: dict = {}

    def entry(self, name):
        """``(dataset, unit, per_unit, sizes, bfloat16, above)``; unit and sizes are None for
        non-tensors, bfloat16 says the tensor holds bfloat16 bit patterns, above is a
        triangle's value above its diagonal (None for other units).
        Refreshing a second handle of a dataset whose chunks were read makes HDF5 2.0 return
        chunk 0's bytes for later chunks (measured on a filtered, extensible dataset), so
        there is one handle per dataset."""
        entry = self._handles.get(name)
        if entry is None:
            ds = self.f[name]
            entry = ((ds, *tensor_attrs(ds), is_bfloat16(ds), above_diagonal(ds))
                     if name.startswith("blocks/") else (ds, None, 1, None, False, None))
            self._handles[name] = entry
        return entry

    def length(self, name) -> int:
        return self.entry(name)[0].shape[0]

    def read(self, name, start, stop, example=None) -> np.ndarray:
        """``ds[start:stop]`` through h5py's low-level read (a fifth of the Python cost); a
        chunk that fails its checksum (or any read error) is a :class:`CorruptRunError`
        naming the file, dataset and example."""
        ds = self.entry(name)[0]
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

    def sizes(self) -> dict:
        """Lengths of the streams the index points into, in their own units (the keys of
        :func:`index_problem`'s ``sizes``)."""
        sizes = {name: self.length(name) for name in STREAMS if not name.startswith("index/")}
        for key in stored_keys(self.f):
            ds, unit, per_unit = self.entry(dataset_path(key))[:3]
            sizes[(unit, key)] = ds.shape[0] // max(per_unit, 1)
        return sizes


def _load_index(data: _Datasets, attrs: dict) -> tuple[int, bool, dict]:
    """``(n_done, complete, committed index rows)``, after checking that every dataset is
    there; a live writer caught between its steps is looked at again."""
    f, path = data.f, data.path
    for name in REQUIRED:
        if not isinstance(f.get(name), h5py.Dataset):
            raise CorruptRunError(f"{path} has no dataset /{name}; the file is damaged "
                                  "or not written by probe (`probe verify` lists what is wrong)")
    missing = [key for key in attrs.get("stored_keys") or []
               if not isinstance(f.get(dataset_path(key)), h5py.Dataset)]
    if missing:
        raise CorruptRunError(f"{path} lists {missing[0]} in stored_keys but has no "
                              f"dataset /{dataset_path(missing[0])}; the file is damaged")
    for attempt in range(20):
        try:
            return _read_index(data)
        except CorruptRunError:
            if not f.swmr_mode or attempt == 19:
                raise
            time.sleep(0.05)  # a live writer between its steps: look again


def _read_index(data: _Datasets) -> tuple[int, bool, dict]:
    f, path = data.f, data.path
    if f.swmr_mode:  # a live run: the commit counter first, then the lengths it points into
        # (the writer grows every dataset before it commits, so lengths read after the
        # counter cover it), each through its one cached handle (see _Datasets.entry)
        data.entry("state/n_done")[0].refresh()
        data.entry("state/complete")[0].refresh()
    n_done = int(data.read("state/n_done", 0, data.length("state/n_done"))[0])
    complete = bool(data.read("state/complete", 0, data.length("state/complete"))[0])
    if f.swmr_mode:
        for name in [dataset_path(k) for k in stored_keys(f)] + list(STREAMS):
            data.entry(name)[0].refresh()
    rows = min(data.length(f"index/{name}") for name in INDEX_FIELDS)
    if not 0 <= n_done <= rows:
        raise CorruptRunError(f"{path}: /state/n_done is {n_done}, outside 0..{rows} (the "
                              f"index holds {rows} rows); the file is damaged")
    index = {name: data.read(f"index/{name}", 0, n_done) for name in INDEX_FIELDS}
    problem = index_problem(index, data.sizes())
    if problem:
        raise CorruptRunError(f"{path}: the index is inconsistent ({problem}); the file "
                              "is damaged (`probe verify` lists what is wrong)")
    return n_done, complete, index


def _example(data: _Datasets, ix: dict, keys, head_map=None) -> Example:
    """The example of one index row ``ix``; its tensors are read when indexed."""
    n, t0, where, path = ix["n_tokens"], ix["token_start"], ix["example"], data.path
    ends = data.read("tokens/end", max(t0 - 1, 0), t0 + n, where)
    if t0 == 0:
        ends = np.concatenate([[0], ends])
    if np.any(np.diff(ends) < 0) or ends[0] < 0 or ends[-1] > data.length("tokens/text"):
        raise CorruptRunError(f"{path}: /tokens/end of example {where} is not an "
                              "increasing range inside /tokens/text; the file is damaged")
    raw = data.read("tokens/text", int(ends[0]), int(ends[-1]), where).tobytes()
    local = ends - ends[0]
    try:
        tokens = [raw[local[j]:local[j + 1]].decode("utf-8") for j in range(n)]
        text = data.read("examples/text", ix["text_start"], ix["text_start"] + ix["text_len"],
                         where).tobytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorruptRunError(f"{path}: the text or tokens of example {where} are not "
                              f"valid UTF-8 ({err.reason}); the file is damaged") from None
    meta = decode_meta(data.read("examples/meta", ix["meta_start"],
                                 ix["meta_start"] + ix["meta_len"], where).tobytes(), path, where)
    input_ids = data.read("tokens/input_ids", t0, t0 + n, where)
    starts = unit_starts(ix)

    def get(key):
        name = dataset_path(key)
        _, unit, per_unit, sizes, bfloat16, above = data.entry(name)
        start = starts[unit] * per_unit
        flat = data.read(name, start, start + units_of(unit, n) * per_unit, where)
        if bfloat16:
            flat = decode_bfloat16(flat)
        if unit == "triangle":
            flat = unpack_triangles(flat, n, per_unit, above)
        return flat.reshape([s if s else n for s in sizes]).astype(np.float32, copy=False)

    return Example(tokens, keys, get, text=text, input_ids=input_ids, meta=meta, index=where,
                   head_map=head_map)


def decode_meta(raw: bytes, path, example) -> dict:
    """One example's metadata (a UTF-8 JSON object), or a :class:`CorruptRunError`.

    >>> decode_meta(b'{"id": "a"}', "run.h5", 0)
    {'id': 'a'}
    """
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
    key = f" (key {names.key(*key_of(name))})" if name.startswith("blocks/") else ""
    what = f"example {example}" if example is not None else f"elements {start}..{stop}"
    reason = str(err).split("(")[0].strip() or type(err).__name__
    if "filter" in str(err) or "checksum" in str(err).lower():
        reason = "a chunk fails its checksum"
    return CorruptRunError(f"{path}: cannot read /{name}{key} for {what}: {reason}; the file is "
                           "damaged on disk. `probe verify` lists every damaged chunk; recapture "
                           "the affected examples into a new run")


def open_run(path, *, layers=None, components=None) -> Run:
    """Open a run file for offline analysis (no model needed).

    >>> import tempfile, os
    >>> from probe import AttentionProbe, load_model, open_run
    >>> model, tokenizer = load_model()
    >>> path = os.path.join(tempfile.mkdtemp(), "run.h5")
    >>> with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
    ...     run = p.run_to_file(["A robin is a bird.", "A robin is not a bird."], path)
    >>> run.close()
    >>> with open_run(path) as run:
    ...     run[1].tokens[4], run[1]["blocks.3.attn.pattern"].shape
    ('not', (12, 9, 9))
    """
    return Run(path, layers=layers, components=components)
