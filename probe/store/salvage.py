"""Before a resume appends: find the committed rows a kill left unreadable and give them up.

A batch's write rewrites the last chunk of every dataset, the chunk that also holds the
end of the committed rows. A process killed in the middle of that write (SIGKILL during the
``pwrite``) leaves the chunk torn: part new bytes, part old, under a checksum that matches
neither, so the committed rows in it fail their fletcher32 check (or no longer decompress),
and shrinking the dataset to the committed end fails too, since HDF5 must read that chunk
to cut it. Every chunk below that one was complete before the commit counter moved and is
never written again, so only these boundary chunks can be torn by a kill.

:func:`intact_rows` checks the boundary chunk of every dataset and returns how many rows
precede the first damaged one; the caller moves the commit counter back to that many, and
the resume captures the rest again (capture is deterministic: the result equals an
uninterrupted run). A damaged chunk then lies wholly past the new end, and HDF5 drops such
chunks without reading them.

One job: that check. Imports h5py and, of the store, ``layout`` (the datasets and how far rows
reach).
"""

from __future__ import annotations

from collections.abc import Iterable

import h5py

from .layout import INDEX_FIELDS, STREAMS, rows_end, token_text_end


def intact_rows(f: h5py.File, n_done: int, tensors: Iterable[tuple[str, str, int]]
                ) -> tuple[int, list[str]]:
    """``(rows, damaged)``: the committed rows (at most ``n_done``) whose every stored value
    reads back, and the datasets whose boundary chunk failed, each with the rows it cost.

    ``tensors``: ``(dataset path, unit, values per unit)`` of every stored tensor. Index
    datasets are checked first: finding how far the rows reach in the other datasets reads
    the index.
    """
    damaged: list[str] = []
    n = n_done
    index = [f"index/{name}" for name in INDEX_FIELDS]
    reach = {**{name: (None, 1) for name in index},
             # /tokens/end before /tokens/text: how far rows reach in the latter is read in it
             "tokens/end": ("token", 1), "tokens/input_ids": ("token", 1),
             "examples/text": ("examples/text", 1), "examples/meta": ("examples/meta", 1),
             "tokens/text": ("tokens/text", 1),
             **{path: (unit, per_unit) for path, unit, per_unit in tensors}}
    assert set(STREAMS) <= set(reach), "every stream must say how far rows reach in it"
    while n:
        for name, (unit, per_unit) in reach.items():
            ds = f[name]
            end = _values(f, n, unit, per_unit)
            first = _boundary_chunk(ds, end)
            if first is None or _readable(ds, first, end):
                continue
            kept = _rows_before(f, n, unit, per_unit, first)
            damaged.append(f"/{name} (rows {kept} to {n - 1})")
            n = kept
            break
        else:
            return n, damaged
    return 0, damaged


def _values(f, n: int, unit: str | None, per_unit: int) -> int:
    """How many values of a dataset the first ``n`` rows take (``unit`` None: index rows)."""
    if unit is None or n == 0:
        return n
    ends = rows_end(f, n)
    if unit == "tokens/text":
        return token_text_end(f, ends["token"])
    return ends[unit] * per_unit


def _boundary_chunk(ds: h5py.Dataset, end: int) -> int | None:
    """Where the chunk holding the last of ``end`` values starts, when it also has room past
    them (only such a chunk is written again by the next batch); None otherwise."""
    size = ds.chunks[0] if ds.chunks else 0
    if not size or end % size == 0:
        return None
    return end - end % size


def _readable(ds: h5py.Dataset, start: int, end: int) -> bool:
    try:
        ds[start:end]
    except (OSError, RuntimeError):  # h5py raises either when a filter (checksum) fails
        return False
    return True


def _rows_before(f, n: int, unit: str | None, per_unit: int, value: int) -> int:
    """The most rows (below ``n``) that end at or before ``value`` in a dataset."""
    lo, hi = 0, n  # rows lo fit; rows hi do not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _values(f, mid, unit, per_unit) <= value:
            lo = mid
        else:
            hi = mid
    return lo
