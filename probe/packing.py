"""Padded batch tensors as a run file's rows: each row cut to its span (padding removed),
flattened in C order, concatenated and cast in one copy per run of equal spans, whole or in
bounded pieces (layer streaming). What :mod:`probe.store.packing` writes.

Imports :mod:`probe.names` and numpy (torch inside the functions); nothing else of probe.
"""

from __future__ import annotations

import numpy as np

from . import names


def unpad_index(component: str, start: int, stop: int) -> tuple[slice, ...]:
    """Index that cuts every sequence axis of one example's array to ``[start, stop)``."""
    return tuple(slice(start, stop) if axis in names.SEQUENCE_AXES else slice(None)
                 for axis in names.AXES[component])


def packed_size(component: str, shape, spans) -> int:
    """Number of values of a padded ``[batch, ...]`` array of ``component`` (``shape``) once
    every row is cut to its span and flattened (what :func:`pack_rows` returns).

    >>> packed_size("pattern", (2, 12, 9, 9), [(0, 5), (0, 9)])
    1272
    """
    fixed, token_axes = 1, 0  # e.g. [head, query, key]: fixed = heads, token_axes = 2
    for axis, size in zip(names.AXES[component], shape[1:]):
        if axis in names.SEQUENCE_AXES:
            token_axes += 1
        else:
            fixed *= int(size)
    return sum(fixed * (b - a) ** token_axes for a, b in spans)


def pack_rows(source, component: str, spans, dtype=np.float32,
              out: np.ndarray | None = None) -> np.ndarray:
    """Every row of the padded tensor ``source`` ``[batch, ...]`` (torch, on any device) of
    ``component``, cut to its span, C-order flattened and concatenated in row order, as
    ``dtype``: the layout of a run file's tensor datasets.

    One copy: each row's unpadded block (or run of rows of equal span) is cast and copied by
    one ``torch.Tensor.copy_`` straight into its place in the result (torch releases the GIL
    for the copy, so a writer thread packing one batch overlaps the next forward pass).
    ``out``, a 1-D numpy buffer of ``dtype`` holding at least :func:`packed_size` values, is
    filled instead of a new array, and its first :func:`packed_size` values are returned.
    ``dtype="bfloat16"`` (which numpy lacks) gives uint16 holding each value's bfloat16 bit
    pattern, rounded as ``torch.Tensor.to(torch.bfloat16)`` rounds.

    >>> import torch
    >>> pack_rows(torch.arange(8.).reshape(2, 1, 4), "sink", [(0, 1), (1, 3)]).tolist()
    [0.0, 5.0, 6.0]
    """
    import torch

    total = packed_size(component, source.shape, spans)
    bfloat16 = isinstance(dtype, str) and dtype == "bfloat16"
    dtype = np.dtype(np.uint16 if bfloat16 else dtype)
    if out is None:
        out = np.empty(total, dtype)
    elif out.dtype != dtype or out.ndim != 1 or out.shape[0] < total:
        raise ValueError(f"pack_rows({component!r}): out must be a 1-D {dtype} buffer of at "
                         f"least {total} values, got {out.dtype} {out.shape}")
    out = out[:total]
    target = torch.from_numpy(out)
    if bfloat16:  # the same bits, seen as bfloat16: copy_ casts into them
        target = target.view(torch.bfloat16)
    at, row = 0, 0
    while row < len(spans):
        # consecutive rows with the same span (common: batches are sorted by length) are
        # contiguous in the result too, so they go in one call: per-call overhead, not
        # bandwidth, dominated packing when it was done row by row
        end = row + 1
        while end < len(spans) and tuple(spans[end]) == tuple(spans[row]):
            end += 1
        block = source[row:end][(slice(None), *unpad_index(component, *spans[row]))]
        size = block.numel()  # block is a view: nothing is copied until copy_
        target[at:at + size].view(block.shape).copy_(block)  # cast + gather, one pass
        at, row = at + size, end
    return out


def pack_pieces(source, component: str, spans, dtype, buffer: np.ndarray):
    """:func:`pack_rows`'s result in consecutive pieces, each at most ``len(buffer)`` values,
    each returned in ``buffer`` (so at most one buffer of memory whatever the tensor's size;
    consume each piece before asking for the next). ``buffer`` is a 1-D numpy array of
    ``dtype`` (uint16 for ``"bfloat16"``).

    >>> import torch
    >>> x = torch.arange(2 * 1 * 3 * 3.).reshape(2, 1, 3, 3)
    >>> [p.tolist() for p in pack_pieces(x, "pattern", [(0, 2), (0, 3)], np.float32, np.empty(4, np.float32))]
    [[0.0, 1.0, 3.0, 4.0], [9.0, 10.0, 11.0], [12.0, 13.0, 14.0], [15.0, 16.0, 17.0]]
    """
    import torch

    target = torch.from_numpy(buffer)
    if isinstance(dtype, str) and dtype == "bfloat16":
        target = target.view(torch.bfloat16)
    limit = buffer.shape[0]
    for row, span in enumerate(spans):
        for piece in _slabs(source[row][unpad_index(component, *span)], limit):
            size = piece.numel()
            target[:size].view(piece.shape).copy_(piece)  # cast + gather, one pass
            yield buffer[:size]


def _slabs(block, limit: int):
    """Consecutive sub-blocks of ``block`` (C order) of at most ``limit`` values each: whole
    leading slices when they fit, else the slices' own slabs (a last axis longer than
    ``limit`` is cut too)."""
    if block.numel() <= limit:
        yield block
    elif block.dim() == 1:
        for a in range(0, block.shape[0], limit):
            yield block[a:a + limit]
    else:
        per = block[0].numel()
        if per <= limit:
            step = limit // max(per, 1)
            for a in range(0, block.shape[0], step):
                yield block[a:a + step]
        else:
            for a in range(block.shape[0]):
                yield from _slabs(block[a], limit)
