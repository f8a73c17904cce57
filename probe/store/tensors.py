"""How a tensor sits in a run file: its dataset's dtype (bfloat16 as uint16 bits), checksum
and chunking, its unit (token, square or packed triangle) and the attributes that say how to
cut one example out of it. Part of the one description of a run file that
:mod:`probe.store.layout` starts; imports numpy, :mod:`probe.names`, :mod:`probe.errors` and
``attrs`` only.

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
"""

from __future__ import annotations

import functools

import numpy as np

from .. import names
from ..errors import InputError
from .attrs import read_attr, to_attr


CHUNK_ELEMENTS = 1 << 18  # at most 256 Ki elements a chunk: 512 KiB in float16, 1 MiB in float32


MIN_CHUNK_ELEMENTS = 1 << 10


TYPICAL_TOKENS = 32  # for sizing chunks before the lengths are known


#: HDF5's chunk cache for each open dataset: two of the largest chunks (CHUNK_ELEMENTS float32).
#: HDF5 2.0's default is 8 MiB a dataset, and a run holds every tensor dataset open: a writer
#: of 8 layers x 7 keys held up to 448 MiB of it. Data is written and read chunk after chunk,
#: so two chunks keep a partly filled chunk cached while the next one fills.
CHUNK_CACHE = {"rdcc_nbytes": 2 * CHUNK_ELEMENTS * 4, "rdcc_nslots": 521}
#: what ``--dtype`` names -> the HDF5 (numpy) type of the tensor datasets; bfloat16, which
#: HDF5 and numpy lack, is stored as its raw 16-bit patterns (see ``STORED_DTYPE``)
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


#: tensor dataset attribute naming the dtype stored in integers (only "bfloat16" so far)
STORED_DTYPE = "stored_dtype"


#: what a virtual dataset shows where a shard holds nothing (NaN in each stored type)
FILL = {"float32": np.nan, "float16": np.nan, "bfloat16": 0x7FC0}


#: the units a tensor dataset counts rows in: name -> units of a row of n tokens
UNITS = {"token": lambda n: n, "square": lambda n: n * n,
         "triangle": lambda n: n * (n + 1) // 2}


#: components a causal layer may store as triangles -> the value of every cell above the
#: diagonal (masked scores are -inf, their softmax 0)
ABOVE_DIAGONAL = {"scores": float("-inf"), "pattern": 0.0}


#: tensor dataset attribute holding that value, in triangle datasets
ABOVE_ATTR = "above_diagonal"


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
