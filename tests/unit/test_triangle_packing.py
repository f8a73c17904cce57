"""Packed lower triangles of causal layers: packing and unpacking are exact inverses on causal
squares (bit for bit, every stored dtype, short rows by gather and long ones query by query),
anything above a diagonal is refused with its place named, and the decision of which keys are
packed follows the model's attention modules."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import _tiny
from probe import AttentionProbe
from probe.store import NotTriangularError, pack_triangles
from probe.store.tensors import ABOVE_DIAGONAL, unit_starts, units_of, unpack_triangles
from probe.packing import pack_pieces
from probe.store.packing import bfloat16_bits
from probe.store.triangles import GATHER_MAX_TOKENS, triangle_pieces
from probe.triangles import triangle_keys

HEADS = 3


def _causal_squares(lengths, component, rng):
    """Rows' [head, n, n] squares of a causal layer, as a square dataset appends them."""
    rows = []
    for n in lengths:
        x = rng.standard_normal((HEADS, n, n)).astype(np.float32)
        x[:, ~np.tri(n, dtype=bool)] = ABOVE_DIAGONAL[component]
        rows.append(x.ravel())
    return np.concatenate(rows)


def _as_stored(values, dtype):
    return bfloat16_bits(values) if dtype == "bfloat16" else values.astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("component", ["scores", "pattern"])
def test_packing_then_unpacking_gives_back_every_square_bit_for_bit(dtype, component):
    rng = np.random.default_rng(0)
    # runs of equal lengths and single rows, on both sides of the gather/row-loop boundary
    lengths = [1, 1, 2, 5, 5, 5, GATHER_MAX_TOKENS, GATHER_MAX_TOKENS + 1, GATHER_MAX_TOKENS + 7]
    squares = _as_stored(_causal_squares(lengths, component, rng), dtype)
    above = _as_stored(np.array([ABOVE_DIAGONAL[component]], np.float32), dtype)[0]
    packed = pack_triangles(squares, lengths, HEADS, above, key="k")
    assert packed.dtype == squares.dtype
    assert packed.shape == (HEADS * sum(n * (n + 1) // 2 for n in lengths),)
    at_square = at_triangle = 0
    for n in lengths:
        size = HEADS * n * (n + 1) // 2
        back = unpack_triangles(packed[at_triangle:at_triangle + size].view(squares.dtype), n,
                                HEADS, above)
        want = squares[at_square:at_square + HEADS * n * n]
        assert back.tobytes() == want.tobytes(), n  # bits, so -inf and signed zeros count
        at_square += HEADS * n * n
        at_triangle += size
    # into a larger reused buffer: only its first values are the result
    out = np.full(packed.shape[0] + 5, 7, squares.dtype)
    assert pack_triangles(squares, lengths, HEADS, above, out=out).tobytes() == packed.tobytes()


@pytest.mark.parametrize("n", [4, GATHER_MAX_TOKENS + 3])
@pytest.mark.parametrize("bad", [0.25, -0.0, np.nan])
def test_a_value_above_the_diagonal_is_refused_with_its_place(n, bad):
    rng = np.random.default_rng(1)
    lengths = [2, n, n]
    squares = _causal_squares(lengths, "pattern", rng)
    # row 2 (the second of the run of n), head 1, query 1, key 3: above the diagonal
    row_start = HEADS * (4 + n * n)
    squares[row_start + 1 * n * n + 1 * n + 3] = bad
    with pytest.raises(NotTriangularError) as info:
        pack_triangles(squares, lengths, HEADS, np.float32(0.0), key="blocks.0.attn.pattern")
    message = str(info.value)
    assert "blocks.0.attn.pattern: row 2 of the batch" in message
    assert "head position 1, query 1, key 3" in message and "--no-pack-causal" in message


def _padded_causal(spans, width, component, rng):
    """A padded ``[batch, head, query, key]`` tensor whose rows are causal within their spans."""
    import torch

    x = rng.standard_normal((len(spans), HEADS, width, width)).astype(np.float32)
    for row, (a, b) in enumerate(spans):
        x[row, :, a:b, a:b][:, ~np.tri(b - a, dtype=bool)] = ABOVE_DIAGONAL[component]
    return torch.from_numpy(x)


@pytest.mark.parametrize("piece", [1, 5, 7, 64, 70 * 70 + 3, 1 << 20])
def test_streamed_pieces_cut_into_the_same_triangles(piece):
    """Layer streaming packs a key in pieces that may cut heads and query rows apart; their
    triangles join up to what the whole batch packs into."""
    rng = np.random.default_rng(2)
    spans = [(0, 70), (0, 3), (0, 1), (2, 9)]
    source = _padded_causal(spans, 72, "scores", rng)
    lengths = [b - a for a, b in spans]
    above = np.float32(-np.inf)
    squares = np.concatenate([p.copy() for p in pack_pieces(  # pieces share one buffer
        source, "scores", spans, np.float32, np.empty(1 << 20, np.float32))])
    whole = pack_triangles(squares, lengths, HEADS, above)
    pieces = pack_pieces(source, "scores", spans, np.float32, np.empty(piece, np.float32))
    joined = [p.copy() for p in triangle_pieces(pieces, lengths, HEADS, above,
                                                np.empty(piece, np.float32))]
    assert np.concatenate(joined).tobytes() == whole.tobytes()


@pytest.mark.parametrize("piece", [4, 100, 1 << 20])
def test_a_streamed_value_above_the_diagonal_is_refused_with_its_place(piece):
    rng = np.random.default_rng(3)
    spans = [(0, 5), (0, 12)]
    source = _padded_causal(spans, 12, "pattern", rng)
    source[1, 2, 7, 9] = 0.5  # row 1, head 2, query 7, key 9
    pieces = pack_pieces(source, "pattern", spans, np.float32, np.empty(piece, np.float32))
    with pytest.raises(NotTriangularError, match="row 1 of the batch \(12 tokens\) holds 0.5 "
                       "above the diagonal \(head position 2, query 7, key 9\)"):
        for _ in triangle_pieces(pieces, [5, 12], HEADS, np.float32(0), np.empty(piece, np.float32)):
            pass


def test_squares_that_do_not_fit_the_lengths_are_refused():
    with pytest.raises(Exception, match="squares of 1 x \\[2\\] tokens"):
        pack_triangles(np.zeros(5, np.float32), [2], 1, np.float32(0))


def test_triangle_offsets_are_the_half_sum_of_token_and_square_offsets():
    n = np.array([3, 1, 7, 7, 2])
    starts = {"token_start": np.cumsum(n) - n, "square_start": np.cumsum(n * n) - n * n}
    tri = units_of("triangle", n)
    np.testing.assert_array_equal(unit_starts(starts)["triangle"], np.cumsum(tri) - tri)


@pytest.mark.parametrize("arch, packed", [("llama", True), ("gpt2", True), ("mistral", True),
                                          ("bert", False), ("distilbert", False)])
def test_causal_layers_pack_scores_and_pattern_only(arch, packed):
    with AttentionProbe(_tiny(arch), keys=["scores", "pattern", "q", "value_weighted"]) as p:
        stored = p.stored_keys
        expected = sorted(k for k in stored if k.endswith(("scores", "pattern"))) if packed else []
        assert triangle_keys(p, stored) == expected
        assert triangle_keys(p, stored, pack_causal=False) == []
