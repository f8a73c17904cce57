"""Packing a batch for a run file: each key's padded rows cut to their tokens (or, for causal
layers, to their lower triangle), cast to the stored dtype and checked, one copy into a reused
buffer; and each batch's index and byte streams. What :class:`~probe.store.writer.RunWriter`
writes, made here.

Imports numpy, :mod:`probe.names`, :mod:`probe.errors`, :mod:`probe.captures` and
:mod:`probe.packing` (row packing) and, of the store, ``layout`` (streams), ``tensors``
(dtypes) and ``triangles``; never the writer or the reader.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import names
from ..captures import CapturedBatch
from ..packing import pack_pieces, packed_size
from ..errors import ProbeError
from .layout import INDEX_FIELDS, STREAMS
from .tensors import DTYPES
from .triangles import pack_triangles, triangle_pieces, units_of_rows


@dataclass(frozen=True)
class BatchRow:
    """One example of a batch as a run stores it.

    ``index``: its position in the input; ``tokens``: its token strings; ``input_ids``: their
    ids (as many as ``tokens``); ``text``: the input text; ``meta``: a JSON-serialisable dict
    (id and the other input fields).

    >>> BatchRow(0, ["[CLS]", "hi"], [101, 7632], "hi", {"id": "a"}).n_tokens
    2
    """

    index: int
    tokens: Sequence[str]
    input_ids: Sequence[int]
    text: str
    meta: dict

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


#: the most values :meth:`RunWriter.write_key` packs at once (8 MiB in float16)
PIECE_VALUES = 1 << 22


class Packer:
    """One copy per key and batch: each key of a :class:`~probe.captures.CapturedBatch` is
    packed (cast and unpadded) into a buffer reused for every key and batch, and that buffer
    is what HDF5 writes from, so a batch allocates nothing. A triangle key takes one more
    copy, of the lower triangles, into a second reused buffer (:func:`pack_triangles`)."""

    def __init__(self, dtype: str, above: dict | None = None):
        self.name = dtype  # "float32", "float16" or "bfloat16" (stored as uint16 bit patterns)
        self.dtype = DTYPES[dtype]
        # triangle keys -> the value above their diagonal, as stored (bfloat16: its bits)
        self.above = {key: self._stored(np.array([value], np.float32))[0]
                      for key, value in (above or {}).items()}
        self._buffers: list[np.ndarray | None] = [None, None]
        self._piece_buffer: np.ndarray | None = None
        self._triangle_piece_buffer: np.ndarray | None = None

    def pack(self, key: str, packed, n: np.ndarray, unit: str, per_unit: int) -> np.ndarray:
        """The values of ``key`` for rows of ``n`` tokens, as a dataset counted in ``unit``
        stores them, in the writer's dtype; from a batch or a mapping (the rows' full arrays:
        squares for a triangle key; values, or for bfloat16 already their uint16 bit patterns)."""
        square = "square" if unit == "triangle" else unit
        data = self._values(key, packed, units_of_rows(square, n) * per_unit)
        if unit != "triangle":
            return data
        size = units_of_rows(unit, n) * per_unit
        return pack_triangles(data, n, per_unit, self.above[key], out=self._scratch(size, 1),
                              key=key)

    def pieces(self, key: str, source, spans):
        """The values of one key's padded torch tensor ``[batch, ...]``, cut to ``spans``, in
        the writer's dtype, as consecutive pieces in a reused buffer of at most
        :data:`PIECE_VALUES` values (:func:`~probe.captures.pack_pieces`); for a triangle
        key, the lower-triangle part of each piece (:func:`triangle_pieces`)."""
        _, component = names.parse_key(key)
        target = self.name if self.name == "bfloat16" else self.dtype
        size = min(packed_size(component, source.shape, spans), PIECE_VALUES)
        buffer = self._piece_buffer
        if buffer is None or buffer.shape[0] < size:
            buffer = self._piece_buffer = np.empty(PIECE_VALUES, self.dtype)
        squares = pack_pieces(source, component, spans, target, buffer[:size])
        if key not in self.above:
            return squares
        out = self._triangle_piece_buffer
        if out is None or out.shape[0] < size:
            out = self._triangle_piece_buffer = np.empty(PIECE_VALUES, self.dtype)
        per_unit = packed_size(component, source.shape, [(0, 1)])  # the fixed axes: heads
        return triangle_pieces(squares, [b - a for a, b in spans], per_unit, self.above[key],
                               out, key=key)

    def _values(self, key: str, packed, size: int) -> np.ndarray:
        if isinstance(packed, CapturedBatch):
            target = self.name if self.name == "bfloat16" else self.dtype
            data = packed.packed(key, target, out=self._scratch(packed.packed_size(key), 0))
        else:
            data = self._stored(packed[key])
        if data.shape != (size,):
            raise ProbeError(f"{key}: got {data.shape[0]} values for a batch that needs {size}")
        return data

    def _stored(self, values: np.ndarray) -> np.ndarray:
        """Values as the dataset stores them (bfloat16: uint16 bit patterns)."""
        if self.name == "bfloat16" and values.dtype != np.uint16:
            return bfloat16_bits(values)
        return values.astype(self.dtype, copy=False)

    def _scratch(self, size: int, slot: int) -> np.ndarray:
        """Reused buffer ``slot``, grown (by half again, to grow rarely) when too small."""
        buf = self._buffers[slot]
        if buf is None or buf.shape[0] < size:
            grown = int(1.5 * buf.shape[0]) if buf is not None else 0
            buf = self._buffers[slot] = np.empty(max(size, grown), self.dtype)
        return buf


def encode_rows(rows: Sequence[BatchRow], extent: dict) -> tuple[np.ndarray, dict]:
    """The token counts of ``rows`` and what they append to every non-tensor dataset, for
    rows that start where ``extent`` (token and square units, bytes per stream) points."""
    n = np.array([r.n_tokens for r in rows], np.int64)
    texts = [r.text.encode("utf-8") for r in rows]
    metas = [json.dumps(r.meta, ensure_ascii=False, default=str).encode("utf-8") for r in rows]
    token_strings = [t.encode("utf-8") for r in rows for t in r.tokens]
    token_end = extent["tokens/text"] + np.cumsum([len(t) for t in token_strings])
    streams = {
        "tokens/input_ids": np.concatenate([np.asarray(r.input_ids, np.int32) for r in rows]),
        "tokens/end": token_end.astype(np.int64),
        "tokens/text": np.frombuffer(b"".join(token_strings), np.uint8),
        "examples/text": np.frombuffer(b"".join(texts), np.uint8),
        "examples/meta": np.frombuffer(b"".join(metas), np.uint8),
    }
    index = {"example": [r.index for r in rows], "n_tokens": n,
             "token_start": extent["token"] + _starts(n),
             "square_start": extent["square"] + _starts(n * n),
             "text_start": extent["examples/text"] + _starts([len(t) for t in texts]),
             "text_len": [len(t) for t in texts],
             "meta_start": extent["examples/meta"] + _starts([len(m) for m in metas]),
             "meta_len": [len(m) for m in metas]}
    for name in INDEX_FIELDS:
        streams[f"index/{name}"] = np.asarray(index[name], dtype=STREAMS[f"index/{name}"][0])
    return n, streams


def bfloat16_bits(values) -> np.ndarray:
    """uint16 bfloat16 bit patterns of float values, rounded as ``torch.Tensor.to(torch.bfloat16)``
    rounds (to nearest, ties to even; NaN stays NaN).

    >>> bfloat16_bits(np.array([1.0, -3.0], np.float32)).tolist()
    [16256, 49216]
    """
    import torch

    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def _starts(lengths) -> np.ndarray:
    """Where each of consecutive pieces of these lengths starts (0 for the first)."""
    lengths = np.asarray(lengths, np.int64)
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
