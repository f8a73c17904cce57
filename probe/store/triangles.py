"""Causal squares as their packed lower triangles: cutting each row's ``[head, query, key]``
square to the cells at or below the diagonal (n(n+1)/2 per head, in ``np.tri`` order), from a
whole batch or from streamed pieces, after checking bit for bit that every cell above the
diagonal holds what the layout says it must (-inf scores, 0 pattern).

Imports numpy, :mod:`probe.errors` and, of the store, ``tensors`` (units, the lower-triangle
mask) and ``errors``; used by :mod:`probe.store.packing`.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import ProbeError
from .errors import NotTriangularError
from .tensors import decode_bfloat16, tril_mask, units_of


_SAME_BITS = {2: np.int16, 4: np.int32, 8: np.int64}  # values compared and moved as their bits


#: rows of up to this many tokens are cut into triangles by one gather (see ``_lower_rows``)
GATHER_MAX_TOKENS = 64


def pack_triangles(squares: np.ndarray, n_tokens, per_unit: int, above, *,
                   out: np.ndarray | None = None, key: str = "") -> np.ndarray:
    """The packed lower triangles (diagonal included) of rows' squares, checking that every
    cell above a diagonal is ``above``.

    ``squares``: each row's ``[per_unit, n, n]`` values, C-order flattened and concatenated in
    row order (what a square dataset appends); ``n_tokens``: each row's n; ``above``: the value
    above the diagonal, in ``squares``' dtype. Returns each row's ``[per_unit, n*(n+1)/2]``
    triangles (cells in the order of :func:`~probe.store.tensors.tril_mask`), concatenated, in
    ``out`` when given. Values are moved and compared as bits, so the triangle and ``above``
    give back the very square (a -0.0 or NaN above a diagonal is refused, not dropped).
    Raises :class:`~probe.store.errors.NotTriangularError` naming ``key``, the row, head
    position, query and key of the first other value above a diagonal.

    >>> sq = np.array([1, 0, 2, 3, 4], np.float32)        # rows of 2 and 1 tokens, one head
    >>> pack_triangles(sq, [2, 1], 1, np.float32(0)).tolist()
    [1.0, 2.0, 3.0, 4.0]
    """
    n = np.asarray(n_tokens, np.int64)
    if squares.shape != (units_of_rows("square", n) * per_unit,):
        raise ProbeError(f"{key}: got {squares.shape} values for squares of {per_unit} x "
                         f"{n.tolist()} tokens")
    bits = _SAME_BITS[squares.dtype.itemsize]
    src = np.ascontiguousarray(squares).view(bits)
    fill = np.asarray(above, squares.dtype).reshape(1).view(bits)[0]
    out = np.empty(units_of_rows("triangle", n) * per_unit, squares.dtype) if out is None else out
    dst = out.view(bits)
    ends = np.flatnonzero(np.diff(n)) + 1  # runs of rows of one length share one call
    at_square = at_triangle = 0
    for first, stop in zip([0, *ends], [*ends, len(n)]) if len(n) else ():
        k = int(n[first])
        size = (stop - first) * per_unit * k * k
        values = src[at_square:at_square + size]
        ok, used = _lower_rows(values.reshape(-1, k), 0, dst[at_triangle:], fill)
        if not ok:
            square, query, col = _first_above(values, 0, k, fill)
            raise _above_error(key, first + square // per_unit, k, square % per_unit, query, col,
                               values[(square * k + query) * k + col], fill, squares.dtype)
        at_square += size
        at_triangle += used
    return out[:at_triangle]


def triangle_pieces(squares, n_tokens, per_unit: int, above, out: np.ndarray, *,
                    key: str = ""):
    """:func:`pack_triangles` of a stream of pieces: ``squares`` yields consecutive pieces of
    rows' ``[per_unit, n, n]`` squares (as :func:`~probe.captures.pack_pieces` does; a piece
    never holds two rows, but may start or end inside a query row), ``n_tokens`` each row's n;
    yields the lower-triangle part of each piece in ``out`` (reused: consume each before the
    next).

    >>> sq = iter([np.array([1, 0, 2], np.float32), np.array([3], np.float32)])
    >>> [p.tolist() for p in triangle_pieces(sq, [2], 1, np.float32(0), np.empty(4, np.float32))]
    [[1.0, 2.0], [3.0]]
    """
    squares = iter(squares)
    for row, k in enumerate(int(x) for x in n_tokens):
        done = 0  # values of this row's squares handed out so far
        while done < per_unit * k * k:
            piece = next(squares)
            bits = _SAME_BITS[piece.dtype.itemsize]
            if done + piece.shape[0] > per_unit * k * k:
                raise ProbeError(f"{key}: a piece of {piece.shape[0]} values runs past the end "
                                 f"of a {k}-token row; it cannot be cut into triangles")
            values = piece.view(bits)
            fill = np.asarray(above, piece.dtype).reshape(1).view(bits)[0]
            ok, used = _lower_cells(values, done, k, out.view(bits), fill)
            if not ok:
                square, query, col = _first_above(values, done, k, fill)
                at = square * k * k + query * k + col - done
                raise _above_error(key, row, k, square, query, col, values[at], fill, piece.dtype)
            yield out[:used]
            done += piece.shape[0]


def _lower_cells(values: np.ndarray, start: int, k: int, target: np.ndarray,
                 fill) -> tuple[bool, int]:
    """:func:`_lower_rows` for consecutive cells of k x k squares that start at cell ``start``
    (of a square stream) and may begin or end inside a query row."""
    size, used, ok = values.shape[0], 0, True
    lead = min((-start) % k, size)  # the rest of a query row begun in an earlier piece
    if lead:
        query, col = (start // k) % k, start % k
        keep = max(0, min(lead, query + 1 - col))
        target[:keep] = values[:keep]
        ok, used = not np.any(values[keep:lead] != fill), keep
    whole = (size - lead) // k
    if whole:
        rows = values[lead:lead + whole * k].reshape(whole, k)
        rows_ok, rows_used = _lower_rows(rows, ((start + lead) // k) % k, target[used:], fill)
        ok, used = ok and rows_ok, used + rows_used
    tail = lead + whole * k
    if tail < size:  # the beginning of a query row that ends in a later piece
        keep = min(size - tail, ((start + tail) // k) % k + 1)
        target[used:used + keep] = values[tail:tail + keep]
        ok, used = ok and not np.any(values[tail + keep:] != fill), used + keep
    return ok, used


def _lower_rows(rows: np.ndarray, q0: int, target: np.ndarray, fill) -> tuple[bool, int]:
    """Copy the lower-triangle part of consecutive query rows ``rows`` ``[m, n]`` of squares
    (the first at query ``q0``) into the start of ``target``, all as bits; returns whether
    every cell above the diagonals equals ``fill``, and how many values were copied.

    Whole squares of up to :data:`GATHER_MAX_TOKENS` tokens go through one gather by cached
    flat indices; longer ones one query row at a time (two slice copies each), which was
    faster from about 64 tokens on here (3x at 512) and needs no indices (they grow as n**2)."""
    m, k = rows.shape
    if q0 == 0 and m % k == 0 and k <= GATHER_MAX_TOKENS:
        count = m // k
        used = count * k * (k + 1) // 2
        lower, upper = _gather_indices(k)
        flat = rows.reshape(count, k * k)
        np.take(flat, lower, axis=1, out=target[:used].reshape(count, -1))
        return not np.any(np.take(flat, upper, axis=1) != fill), used
    ok, at = True, 0
    for j in range(m):
        query = (q0 + j) % k
        target[at:at + query + 1] = rows[j, :query + 1]
        ok = ok and not np.any(rows[j, query + 1:] != fill)
        at += query + 1
    return ok, at


@functools.lru_cache(maxsize=GATHER_MAX_TOKENS)
def _gather_indices(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the cells on and below, and above, the diagonal of a k x k square."""
    mask = tril_mask(k).ravel()
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def _first_above(values: np.ndarray, start: int, k: int, fill) -> tuple[int, int, int]:
    """``(square, query, key)`` of the first cell above a diagonal that is not ``fill``, in
    consecutive cells ``values`` of k x k squares that start at cell ``start`` (squares are
    counted from that stream's start)."""
    cells = start + np.flatnonzero(values != fill)
    square, cell = np.divmod(cells, k * k)
    query, col = np.divmod(cell, k)
    first = np.flatnonzero(col > query)[0]
    return int(square[first]), int(query[first]), int(col[first])


def _above_error(key, row, k, head, query, col, value, fill, dtype) -> NotTriangularError:
    """The error for a value (as bits of ``dtype``) above a diagonal that is not ``fill``."""
    value, fill = (np.asarray(x).reshape(1).view(dtype) for x in (value, fill))
    if dtype == np.uint16:  # bfloat16 bit patterns
        value, fill = decode_bfloat16(value), decode_bfloat16(fill)
    return NotTriangularError(
        f"{key}: row {row} of the batch ({k} tokens) holds {float(value[0])!r} above the "
        f"diagonal (head position {head}, query {query}, key {col}), where a causal layer "
        f"holds {float(fill[0])!r}; this layer does not attend causally, and storing its lower "
        "triangle would lose that value. Capture it unpacked, into a new file: probe capture "
        "--no-pack-causal (pack_causal=False)")


def units_of_rows(unit: str, n: np.ndarray) -> int:
    """Units (tokens, cells of n_tokens**2, or of its lower triangle) of rows of ``n`` tokens."""
    return int(units_of(unit, np.asarray(n, np.int64)).sum())
