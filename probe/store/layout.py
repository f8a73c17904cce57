"""The one description of a run file: groups, datasets, dtypes, chunking and checksum options,
attributes, what a consistent index satisfies, and the settings that make a run the run it is. Imports nothing from the other
store modules (they all import it); it describes the file, it opens and writes nothing.

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

Triangles (version 2). A causal layer (its attention module's ``is_causal``) attends only to
earlier keys, so its [head, query, key] squares hold a fixed value above the diagonal: -inf in
``scores``, 0 in ``pattern``. Such keys may be stored as the lower triangle of each head's
square, diagonal included: unit "triangle", n*(n+1)/2 values per head, row by row (query 0's
key 0; query 1's keys 0..1; ...: the True cells of ``np.tri(n, dtype=bool)`` in C order), and
the dataset attribute ``above_diagonal`` holds the value of every cell above the diagonal.
There is no triangle_start index column: rows are concatenated, so row r starts at
``triangle_start[r] = (square_start[r] + token_start[r]) / 2`` triangle units (the sum of the
earlier rows' n*(n+1)/2). The root attribute ``triangle_keys`` (present only when some key is
packed; part of the run's identity) lists the packed keys. Which keys: scores and pattern of
every layer whose attention module has ``is_causal`` True (:mod:`probe.triangles`; sliding
windows are lower triangular too), unless the capture turns packing off (``probe capture
--no-pack-causal``, ``pack_causal=False``). The writer does not trust the flag: it refuses a
batch whose cells above a diagonal are not exactly ``above_diagonal`` (bit for bit, in the
stored dtype) with :class:`~probe.store.errors.NotTriangularError`, so a triangle reads back
as the very square a square store holds. Version 1 files are version 2 files without
triangles; this code reads both and writes version 2.

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
import functools
import json

import h5py
import numpy as np

from .. import names
from ..errors import InputError

SCHEMA = "probe.run"
SCHEMA_VERSION = 2
#: schema versions this code reads: 1 (no triangles) and 2 (adds the "triangle" unit)
READABLE_VERSIONS = (1, 2)
CHUNK_ELEMENTS = 1 << 18  # at most 256 Ki elements a chunk: 512 KiB in float16, 1 MiB in float32
MIN_CHUNK_ELEMENTS = 1 << 10
TYPICAL_TOKENS = 32  # for sizing chunks before the lengths are known
#: what ``--dtype`` names -> the HDF5 (numpy) type of the tensor datasets; bfloat16, which
#: HDF5 and numpy lack, is stored as its raw 16-bit patterns (see ``STORED_DTYPE``)
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
#: tensor dataset attribute naming the dtype stored in integers (only "bfloat16" so far)
STORED_DTYPE = "stored_dtype"
#: what a virtual dataset shows where a shard holds nothing (NaN in each stored type)
FILL = {"float32": np.nan, "float16": np.nan, "bfloat16": 0x7FC0}

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
#: the units a tensor dataset counts rows in: name -> units of a row of n tokens
UNITS = {"token": lambda n: n, "square": lambda n: n * n,
         "triangle": lambda n: n * (n + 1) // 2}
#: components a causal layer may store as triangles -> the value of every cell above the
#: diagonal (masked scores are -inf, their softmax 0)
ABOVE_DIAGONAL = {"scores": float("-inf"), "pattern": 0.0}
#: tensor dataset attribute holding that value, in triangle datasets
ABOVE_ATTR = "above_diagonal"
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
            "n_examples": True, "shard": False}
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


def decode_bfloat16(raw: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 bit patterns stored as uint16 (exact: bfloat16 is the top
    half of a float32).

    >>> decode_bfloat16(np.array([0x3F80, 0xC040], np.uint16)).tolist()
    [1.0, -3.0]
    """
    return (raw.astype(np.uint32) << 16).view(np.float32)


def is_bfloat16(ds) -> bool:
    """Whether a tensor dataset holds bfloat16 bit patterns (see ``STORED_DTYPE``)."""
    return read_attr(ds.attrs.get(STORED_DTYPE, "")) == "bfloat16"


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


def unit_of(component: str, triangle: bool = False) -> str:
    """``square`` for [head, query, key] tensors (``triangle`` when stored packed), ``token``
    for the rest.

    >>> unit_of("pattern"), unit_of("pattern", triangle=True), unit_of("q")
    ('square', 'triangle', 'token')
    """
    axes = names.AXES[component]
    if "query" in axes and "key" in axes:
        return "triangle" if triangle else "square"
    return "token"


def units_of(unit: str, n):
    """Units a row of ``n`` tokens takes (``n`` may be an array of rows' token counts).

    >>> units_of("token", 4), units_of("square", 4), units_of("triangle", 4)
    (4, 16, 10)
    """
    return UNITS[unit](n)


def unit_starts(index: dict) -> dict:
    """Where index rows start in each unit, from their ``token_start`` and ``square_start``
    (a triangle start is their half-sum: see the module docstring).

    >>> unit_starts({"token_start": 3, "square_start": 5})
    {'token': 3, 'square': 5, 'triangle': 4}
    """
    token, square = index["token_start"], index["square_start"]
    return {"token": token, "square": square, "triangle": (square + token) // 2}


@functools.lru_cache(maxsize=16)
def tril_mask(n: int) -> np.ndarray:
    """The cells of an n x n square a triangle holds (read-only): ``np.tri(n, dtype=bool)``;
    a triangle lists them in C order.

    >>> tril_mask(3).astype(int).tolist()
    [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    """
    mask = np.tri(n, dtype=bool)
    mask.setflags(write=False)
    return mask


def unpack_triangles(values: np.ndarray, n: int, per_unit: int, above: float) -> np.ndarray:
    """``[per_unit, n, n]`` squares of one row's ``per_unit`` packed lower triangles (each
    n*(n+1)/2 values), every cell above the diagonal ``above``; in ``values``' dtype (decode
    bfloat16 bit patterns first).

    >>> unpack_triangles(np.array([1., 2, 3]), 2, 1, -np.inf).tolist()
    [[[1.0, -inf], [2.0, 3.0]]]
    """
    squares = np.full((per_unit, n, n), above, values.dtype)
    squares[:, tril_mask(n)] = values.reshape(per_unit, -1)
    return squares


def stored_keys(f: h5py.File) -> list[str]:
    """The keys of the tensor datasets present in ``f``."""
    keys = []
    if "blocks" not in f:
        return keys
    for layer in f["blocks"]:
        for component in f[f"blocks/{layer}/attn"]:
            keys.append(names.key(int(layer), component))
    return keys


def compression_args(compression: str | None) -> dict:
    """h5py keyword arguments for ``none``, ``lzf``, ``gzip`` or ``gzip-N``.

    >>> compression_args("gzip-3")
    {'compression': 'gzip', 'compression_opts': 3, 'shuffle': True}
    """
    if compression in (None, "", "none"):
        return {}
    if compression == "lzf":
        return {"compression": "lzf"}
    if compression.startswith("gzip"):
        level = int(compression.split("-")[1]) if "-" in compression else 4
        return {"compression": "gzip", "compression_opts": level, "shuffle": True}
    raise InputError(f"unknown compression {compression!r}: use none, lzf, gzip or gzip-N (N=1..9)")


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}: use {' or '.join(DTYPES)}")


def tensor_options(unit: str, sizes, *, dtype: str, compression: str | None,
                   n_examples: int, typical=None) -> dict:
    """h5py ``create_dataset`` keywords of a new, empty tensor dataset counted in ``unit``.
    Chunks are sized for about 64 chunks per dataset over ``n_examples`` examples, between
    1 Ki and 256 Ki elements, so small runs stay small and large ones read fast. ``typical`` is
    the mean number of tokens and of tokens squared per example (default: 32 tokens); long
    sequences need it: HDF5 keeps per-chunk bookkeeping in memory, and one 4,096-token example
    cut into 1 Ki-element chunks cost 420 MiB of it (benchmarks/long_sequence.py).

    >>> tensor_options("square", [4, 0, 0], dtype="float16", compression=None, n_examples=1,
    ...                typical=(4096, 4096 ** 2))["chunks"]
    (262144,)
    """
    tokens, squares = typical or (TYPICAL_TOKENS, TYPICAL_TOKENS ** 2)
    # mean units of an example: a triangle's n(n+1)/2 averages (squares + tokens) / 2
    per_row = {"token": tokens, "square": squares, "triangle": (squares + tokens) / 2}[unit]
    per_example = per_unit_of(sizes) * per_row
    chunk = 1 << int(np.ceil(np.log2(max(n_examples * per_example / 64, 1))))
    chunk = int(np.clip(chunk, MIN_CHUNK_ELEMENTS, CHUNK_ELEMENTS))
    return {"shape": (0,), "maxshape": (None,), "dtype": DTYPES[dtype], "chunks": (chunk,),
            "fletcher32": True, **compression_args(compression)}


def per_unit_of(sizes) -> int:
    """Elements per unit of a tensor whose fixed axis sizes are ``sizes`` (0 = a token axis)."""
    return int(np.prod([s for s in sizes if s]))


def write_tensor_attrs(ds, component: str, sizes, per_unit: int, dtype: str = "float32",
                       unit: str | None = None) -> None:
    """The attributes that say how to cut one example out of a tensor dataset (and, for
    bfloat16, how to read its integers; for a triangle, what lies above its diagonal).
    ``unit``: default :func:`unit_of` the component."""
    unit = unit or unit_of(component)
    ds.attrs["axes"] = to_attr(list(names.AXES[component]))
    ds.attrs["sizes"] = [int(x) for x in sizes]
    ds.attrs["unit"] = unit
    ds.attrs["per_unit"] = int(per_unit)
    if dtype == "bfloat16":
        ds.attrs[STORED_DTYPE] = "bfloat16"
    if unit == "triangle":
        ds.attrs[ABOVE_ATTR] = ABOVE_DIAGONAL[component]


def tensor_attrs(ds) -> tuple[str, int, list[int]]:
    """``(unit, per_unit, sizes)`` of a tensor dataset (see :func:`write_tensor_attrs`)."""
    return (str(read_attr(ds.attrs["unit"])), int(ds.attrs["per_unit"]),
            [int(x) for x in ds.attrs["sizes"]])


def above_diagonal(ds) -> float | None:
    """The value above the diagonal of a triangle dataset (None for other units)."""
    value = ds.attrs.get(ABOVE_ATTR)
    return None if value is None else float(value)


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
    extent = index_ends({name: int(f[f"index/{name}"][n_done - 1]) for name in INDEX_FIELDS})
    tokens = extent["token"]
    extent["tokens/text"] = int(f["tokens/end"][tokens - 1]) if tokens else 0
    return extent


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


def read_attr(value):
    """An attribute as h5py returns it, as plain Python (str, list, int, float)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [read_attr(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_attr(value):
    """Attributes as h5py stores them: lists of strings become variable-length string arrays."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return np.array(list(value), dtype=h5py.string_dtype())
    if value is None:
        return ""
    if isinstance(value, str):
        return str(value)  # plain str: h5py cannot store str subclasses (e.g. TorchVersion)
    return value


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (the ``created`` attribute)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
