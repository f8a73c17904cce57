"""The array plumbing every test shares: samples as ``[row, cell]``, cluster codes, cells grouped
by which rows they have, memory-capped chunks, and mean and sd per cell.

One job: shape and describe the data; no test or interval is computed here. Imports numpy and
``probe.errors`` only.
"""

from __future__ import annotations

from typing import Hashable, Iterator, Sequence

import numpy as np

from ..errors import InputError

DEGENERATE_RTOL = 1e-12  # an sd below this times |mean| counts as zero spread
CHUNK_ELEMENTS = 1 << 22  # cap on [resample, cell] blocks held at once (32 MiB)


def as_cells(values, name: str = "values") -> tuple[np.ndarray, tuple[int, ...]]:
    """``values[pair, ...]`` as float ``[pair, cell]`` and the trailing shape."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0:
        raise InputError(f"{name}: expected an array [pair, ...], found a scalar; "
                         "put the samples along axis 0")
    if np.isinf(values).any():
        raise InputError(f"{name}: expected finite values or NaN, found {int(np.isinf(values).sum())} "
                         "infinite entries; replace them with NaN to leave them out")
    return values.reshape(values.shape[0], -1), values.shape[1:]


def cluster_codes(clusters: Sequence[Hashable], n_pairs: int) -> tuple[np.ndarray, list]:
    """Integer code per pair (labels in order of first appearance) and the labels."""
    labels = list(clusters)
    if len(labels) != n_pairs:
        raise InputError(f"clusters: expected one label per pair ({n_pairs}), found {len(labels)}; "
                         "pass a sequence as long as axis 0 of the values")
    index: dict = {}
    codes = np.fromiter((index.setdefault(label, len(index)) for label in labels), dtype=np.int64,
                        count=n_pairs)
    return codes, list(index)


def mask_groups(valid: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(mask [row], cells)`` for each distinct validity column of ``valid [row, cell]``."""
    rows, n_cells = valid.shape
    if n_cells == 0:
        return
    if rows == 0:
        yield np.zeros(0, dtype=bool), np.arange(n_cells)
        return
    packed = np.ascontiguousarray(np.packbits(valid, axis=0).T)  # one byte string per cell
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    for cell, cells in zip(first, np.split(order, bounds)):
        yield valid[:, cell], cells


def chunks(n_cells: int, n_rows: int) -> Iterator[slice]:
    step = max(1, CHUNK_ELEMENTS // max(n_rows, 1))
    for start in range(0, n_cells, step):
        yield slice(start, min(start + step, n_cells))


def describe(means: np.ndarray, valid: np.ndarray):
    """n, mean and sd (ddof=1) over rows of ``means [row, cell]`` where ``valid``."""
    n = valid.sum(0)
    filled = np.where(valid, means, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, filled.sum(0) / np.maximum(n, 1), np.nan)
        dev = np.where(valid, means - mean, 0.0)
        sd = np.where(n > 1, np.sqrt((dev ** 2).sum(0) / np.maximum(n - 1, 1)), np.nan)
    return n, mean, sd


def zero_spread(sd: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    """True where the spread is zero for practical purposes (d or t would be inf or huge noise)."""
    with np.errstate(invalid="ignore"):
        scale = np.maximum(np.abs(np.nan_to_num(estimate)), 1e-300)
        return ~(sd > DEGENERATE_RTOL * scale)
