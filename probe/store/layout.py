"""The one description of a run file: groups, datasets, dtypes, chunking and checksum options,
attributes, what a consistent index satisfies, and the settings that make a run the run it is.
Imports h5py, numpy, :mod:`probe.names` and ``tensors`` (the other half of the description);
the other store modules import it. It describes the file, it opens and writes nothing.

Layout (schema ``probe.run`` version 2; README.md has a full h5py-only example)::

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
                           attrs: axes, sizes (0 = n_tokens), unit ("token", "square" or
                           "triangle"), per_unit (elements per unit); row r starts at
                           {unit}_start[r] * per_unit and holds units(n) * per_unit values
                           (units: n, n**2, n*(n+1)/2; see ``UNITS``). Runs written with
                           dtype bfloat16 (which HDF5 lacks) hold uint16 bit patterns and
                           carry the attr stored_dtype = "bfloat16": value = float32 with
                           these 16 bits on top, (raw.astype(np.uint32) << 16).view(np.float32).

Tensor datasets (dtypes, units, packed triangles, chunking): :mod:`probe.store.tensors`.

Heads (root attributes, JSON strings): ``head_map`` maps every captured layer to
``{"heads": [...], "kv_heads": [...]}``, the model's query head at each position of the
``head`` axis of that layer's datasets and its key/value head at each position of the
``kv_head`` axis (of k and v); ``heads`` (present only when the run selected heads, part of the
run's identity) maps each layer captured with a head selection to its query heads. A file
without ``head_map`` (written before it existed) holds every head in order.

Why this layout (measured, see README): ragged concatenation keeps files free of padding and
makes one example one contiguous slice per tensor; fixed-type datasets are what HDF5's SWMR
mode supports, and SWMR keeps the file consistent on disk at every moment, so a run killed at
any point still opens, with every committed batch intact.
"""

from __future__ import annotations

import datetime as dt
import json

import h5py
import numpy as np

from .. import names
from .tensors import UNITS, unit_starts, units_of

SCHEMA = "probe.run"
SCHEMA_VERSION = 2
#: schema versions this code reads: 1 (no triangles) and 2 (adds the "triangle" unit)
READABLE_VERSIONS = (1, 2)

#: the ``readme`` attribute of every run: how to read it with h5py alone
FILE_README = """probe run file (schema probe.run, version 2). Read with h5py alone:
  n = f['state/n_done'][0]                      # committed rows; ignore anything beyond
  row = ...                                     # rows are in batch order; f['index/example'][row] is the input index
  t0, L = f['index/token_start'][row], f['index/n_tokens'][row]
  q0 = f['index/square_start'][row]
  ds = f['blocks/3/attn/pattern']               # any key blocks.{l}.attn.{c} -> blocks/{l}/attn/{c}
  unit, p = ds.attrs['unit'], ds.attrs['per_unit']
  s0 = {'token': t0, 'square': q0, 'triangle': (q0 + t0) // 2}[unit] * p
  units = {'token': L, 'square': L * L, 'triangle': L * (L + 1) // 2}[unit]
  x = ds[s0 : s0 + units * p]
  # ds.attrs.get('stored_dtype') == 'bfloat16': x holds uint16 bfloat16 bit patterns, so first
  #   x = (x.astype(np.uint32) << 16).view(np.float32)
  # unit 'triangle' (a causal layer's scores or pattern): each head's lower triangle, diagonal
  #   included, row by row; every cell above the diagonal is ds.attrs['above_diagonal']:
  #   sq = np.full((p, L, L), ds.attrs['above_diagonal'], x.dtype)
  #   sq[:, np.tri(L, dtype=bool)] = x.reshape(p, -1); x = sq
  #   (the root attribute triangle_keys lists such keys; absent when there are none)
  x = x.reshape([s or L for s in ds.attrs['sizes']])
  # axes of x: ds.attrs['axes']; value_weighted = pattern * value_norm[:, None, :]
  # heads: json.loads(f.attrs['head_map'])[str(layer)]['heads'][i] is the model's head at
  #   position i of the head axis ('kv_heads' for the kv_head axis of k and v)
  text = f['examples/text'][a:a+m].tobytes().decode()   # a, m = index/text_start, index/text_len
  ends = f['tokens/end'][t0-1 : t0+L] (prepend 0 when t0 == 0); token j = tokens/text[ends[j]:ends[j+1]]
"""

#: the run's state: two counters rewritten in place at every commit (so not checksummed)
STATE = {"state/n_done": np.int64, "state/complete": np.int8}
INDEX_FIELDS = ("example", "n_tokens", "token_start", "square_start", "text_start", "text_len",
                "meta_start", "meta_len")
BYTE_STREAMS = ("examples/text", "examples/meta", "tokens/text")
#: every 1-D dataset a run has besides its tensors: path -> (dtype, chunk elements). Each is
#: extensible and carries HDF5's fletcher32 checksum per chunk: a damaged chunk fails its
#: read (and `probe verify`) instead of returning wrong numbers
STREAMS = {
    **{f"index/{name}": (np.int32 if name == "n_tokens" else np.int64, 1 << 11)
       for name in INDEX_FIELDS},
    **{name: (np.uint8, 1 << 13) for name in BYTE_STREAMS},
    "tokens/input_ids": (np.int32, 1 << 12),
    "tokens/end": (np.int64, 1 << 12),
}
#: datasets every run has (tensors are listed by the file's ``stored_keys``)
REQUIRED = (*STATE, *STREAMS)
#: the offset each index column holds, and the stream it points into (see ``index_ends``)
OFFSETS = {"token_start": "token", "square_start": "square", "text_start": "examples/text",
           "meta_start": "examples/meta"}

#: The settings that make a run the run it is, one table for resume and combine:
#: name -> True when every shard of one run shares it. A resume continues one file, so it
#: must match all of them; ``combine`` joins the shards of one split, which by design differ
#: in ``shard`` (K/N) and must agree in the rest.
IDENTITY = {"model": True, "model_fingerprint": True, "keys": True, "stored_keys": True,
            "heads": True, "triangle_keys": True, "dtype": True, "compression": True,
            "truncate": True, "batch_size": True, "window": True, "input_sha256": True,
            "n_examples": True, "shard": False, "shard_unit": True}
#: what a resumed run must match
RESUME_MUST_MATCH = tuple(IDENTITY)
#: what every shard of one run shares
RUN_IDENTITY = tuple(name for name, shared in IDENTITY.items() if shared)


def differing_settings(have: dict, want: dict, settings) -> list[str]:
    """The names in ``settings`` whose values differ between two runs' attributes (lists
    compared as lists; an absent list attribute counts as empty).

    >>> differing_settings({"dtype": "float16", "keys": ["a"]}, {"dtype": "float32", "keys": ("a",)},
    ...                    ["dtype", "keys"])
    ['dtype']
    """
    diffs = []
    for name in settings:
        a, b = have.get(name), want.get(name)
        if isinstance(b, (list, tuple)):
            a, b = list(a or []), list(b)
        if a != b:
            diffs.append(name)
    return diffs


def heads_attr(heads: dict) -> str:
    """The ``heads`` attribute of a head selection ``{layer: query heads}``.

    >>> heads_attr({5: (0, 1), 3: (7,)})
    '{"3": [7], "5": [0, 1]}'
    """
    return json.dumps({str(layer): [int(h) for h in hs] for layer, hs in sorted(heads.items())})


def head_map_attr(head_map: dict) -> str:
    """The ``head_map`` attribute: ``{layer: (query heads, kv heads)}`` as JSON.

    >>> head_map_attr({3: ((7,), (1,))})
    '{"3": {"heads": [7], "kv_heads": [1]}}'
    """
    return json.dumps({str(layer): {"heads": [int(h) for h in hs], "kv_heads": [int(h) for h in kv]}
                       for layer, (hs, kv) in sorted(head_map.items())})


def read_head_map(attrs: dict, sizes: dict) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``{layer: (query heads, kv heads)}`` of a run from its root attributes; for a file
    without ``head_map`` (every head kept), from ``sizes``: ``{key: fixed axis sizes}``.

    >>> read_head_map({}, {"blocks.0.attn.q": [4, 0, 8], "blocks.0.attn.k": [2, 0, 8]})
    {0: ((0, 1, 2, 3), (0, 1))}
    """
    raw = attrs.get("head_map")
    if raw:
        return {int(layer): (tuple(v["heads"]), tuple(v["kv_heads"]))
                for layer, v in json.loads(raw).items()}
    found: dict[int, list] = {}
    for key, size in sizes.items():
        layer, component = names.parse_key(key)
        axis = names.AXES[component][0]
        entry = found.setdefault(layer, [(), ()])
        entry[0 if axis == "head" else 1] = tuple(range(int(size[0])))
    return {layer: (hs, kv) for layer, (hs, kv) in sorted(found.items())}


def dataset_path(key: str) -> str:
    """HDF5 path of a capture key.

    >>> dataset_path("blocks.3.attn.q")
    'blocks/3/attn/q'
    """
    layer, component = names.parse_key(key)
    return f"blocks/{layer}/attn/{component}"


def key_of(path: str) -> tuple[int, str]:
    """``(layer, component)`` of a tensor dataset's path (the inverse of :func:`dataset_path`)."""
    _, layer, _, component = path.split("/")
    return int(layer), component


def stored_keys(f: h5py.File) -> list[str]:
    """The keys of the tensor datasets present in ``f``."""
    keys = []
    if "blocks" not in f:
        return keys
    for layer in f["blocks"]:
        for component in f[f"blocks/{layer}/attn"]:
            keys.append(names.key(int(layer), component))
    return keys


def index_ends(last: dict) -> dict[str, int]:
    """How far rows ending with the index row ``last`` reach: token, square and triangle units,
    and the bytes of the text and metadata streams (``tokens/text`` needs ``/tokens/end``)."""
    n = int(last["n_tokens"])
    starts = unit_starts({name: int(last[name]) for name in ("token_start", "square_start")})
    return {**{unit: int(starts[unit]) + units_of(unit, n) for unit in UNITS},
            "examples/text": int(last["text_start"]) + int(last["text_len"]),
            "examples/meta": int(last["meta_start"]) + int(last["meta_len"])}


def committed_extent(f, n_done: int) -> dict[str, int]:
    """How far the committed rows reach: token, square and triangle units, and bytes of each
    stream."""
    if n_done == 0:
        return dict.fromkeys((*UNITS, *BYTE_STREAMS), 0)
    extent = rows_end(f, n_done)
    extent["tokens/text"] = token_text_end(f, extent["token"])
    return extent


def rows_end(f, n: int) -> dict[str, int]:
    """:func:`index_ends` of the first ``n`` (at least 1) index rows, read from their last
    row (everything but ``tokens/text``, which needs ``/tokens/end``)."""
    return index_ends({name: int(f[f"index/{name}"][n - 1]) for name in INDEX_FIELDS})


def token_text_end(f, tokens: int) -> int:
    """Bytes of ``/tokens/text`` the first ``tokens`` tokens take."""
    return int(f["tokens/end"][tokens - 1]) if tokens else 0


def index_problem(index: dict, sizes: dict, *, first: dict | None = None) -> str | None:
    """What is wrong with committed index rows (None when nothing): every offset must follow
    from the previous row (the streams are concatenations) and stay within its stream.
    ``first``: the offsets the first of these rows must start at (0 for a whole run)."""
    n = index["n_tokens"].astype(np.int64)
    if not len(n):
        return None
    first = first or dict.fromkeys(OFFSETS, 0)
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
    ends = index_ends({name: index[name][-1] for name in INDEX_FIELDS})
    ends["tokens/input_ids"] = ends["tokens/end"] = ends["token"]
    for name in ("examples/text", "examples/meta", "tokens/input_ids", "tokens/end"):
        if name in sizes and ends[name] > sizes[name]:
            return f"the rows reach element {ends[name]} of /{name}, which holds {sizes[name]}"
    for key, size in sizes.items():
        if isinstance(key, tuple) and ends[key[0]] > size:
            return f"the rows reach {key[0]} {ends[key[0]]} of {key[1]}, which holds {size}"
    return None


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (the ``created`` attribute)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
