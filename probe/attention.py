"""Pure attention math on batched tensors; no hooks, no model.

Shapes use the project's axis words: ``batch head kv_head query key token d_head d_model``.

Imports torch, einops and :mod:`probe.errors`.

>>> import torch
>>> q = torch.randn(1, 4, 5, 8); k = torch.randn(1, 2, 5, 8); v = torch.randn(1, 2, 5, 8)
>>> scores, pattern, z = attend(q, k, v, mask=None, scaling=8 ** -0.5)
>>> tuple(pattern.shape), bool(torch.allclose(pattern.sum(-1), torch.ones(1, 4, 5)))
((1, 4, 5, 5), True)
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat

from .errors import UnsupportedModelError


def repeat_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Expand key/value heads to query heads: query head h reads kv head h // group.

    ``[batch, kv_head, token, d_head] -> [batch, head, token, d_head]``
    """
    n_kv = x.shape[1]
    if n_kv == n_heads:
        return x
    return repeat(x, "batch kv_head token d_head -> batch (kv_head group) token d_head",
                  group=n_heads // n_kv)


def additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A transformers attention mask as an additive float mask (0 keeps, dtype-min drops)."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.finfo(dtype).min)


def masked_positions(mask: torch.Tensor) -> torch.Tensor:
    """Boolean ``[batch, 1|head, query, key]``: True where an additive mask drops the entry."""
    return mask <= torch.finfo(mask.dtype).min / 2


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           scaling: float, *, softcap: float | None = None):
    """Eager attention, step by step, as transformers' eager functions compute it.

    q: ``[batch, head, query, d_head]``; k, v: ``[batch, kv_head, key, d_head]``;
    mask: additive ``[batch, 1, query, key]`` or None.
    Returns ``scores`` (scaled, soft-capped when ``softcap`` is given, mask added),
    ``pattern`` (softmax over keys, computed in float32 and cast back like the Llama family
    does) and ``z = pattern @ v`` ``[batch, head, query, d_head]``.
    """
    scores, pattern, z, _ = attend_with_sink(q, k, v, mask, scaling, softcap=softcap)
    return scores, pattern, z


def logits(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, scaling: float,
           softcap: float | None = None) -> torch.Tensor:
    """``q k^T * scaling``, soft-capped as ``cap * tanh(x / cap)`` (Gemma 2), plus the mask.

    The order is that of transformers' eager functions: cap first, then add the mask, so
    masked entries stay at the mask's minimum.

    >>> q = torch.full((1, 1, 1, 1), 10.0); k = torch.ones(1, 1, 2, 1)
    >>> logits(q, k, None, 1.0, softcap=5.0).flatten().tolist()
    [4.8201..., 4.8201...]
    """
    # in place on the fresh matmul result: the same operations in the same order as
    # ``(q @ k^T) * scaling + mask`` (identical numbers), without two more score-sized tensors;
    # autograd allows it (neither matmul nor mul saves its output)
    scores = torch.matmul(q, repeat_kv(k, q.shape[1]).transpose(-1, -2)).mul_(scaling)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        in_place = (mask.dtype == scores.dtype and mask.dim() == scores.dim()
                    and all(m in (1, n) for m, n in zip(mask.shape, scores.shape)))
        scores = scores.add_(mask) if in_place else scores + mask
    return scores


def attend_with_sink(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: torch.Tensor | None, scaling: float, *,
                     softcap: float | None = None, sinks: torch.Tensor | None = None):
    """:func:`attend` plus the share of a learned attention sink (gpt-oss).

    ``sinks`` ``[head]`` is one extra logit per head that joins every row's softmax and is
    dropped after it (as gpt-oss's eager function does: max subtracted, softmax in the
    logits' dtype), so a pattern row sums to ``1 - sink``. Returns ``scores, pattern, z,
    sink`` with ``sink`` ``[batch, head, query]``; zeros when ``sinks`` is None.

    >>> q = torch.zeros(1, 2, 3, 4); k = torch.zeros(1, 1, 3, 4); v = torch.ones(1, 1, 3, 4)
    >>> _, pattern, _, sink = attend_with_sink(q, k, v, None, 0.5, sinks=torch.zeros(2))
    >>> bool(torch.allclose(pattern.sum(-1) + sink, torch.ones(1, 2, 3))), sink[0, 0, 0].item()
    (True, 0.25)
    """
    scores = logits(q, k, mask, scaling, softcap)
    if sinks is None:
        pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
        sink = pattern.new_zeros(pattern.shape[:-1])
    else:
        column = sinks.reshape(1, -1, 1, 1).to(scores.dtype).expand(*scores.shape[:-1], 1)
        combined = torch.cat([scores, column], dim=-1)
        combined = combined - combined.max(dim=-1, keepdim=True).values
        probs = torch.softmax(combined, dim=-1, dtype=combined.dtype)
        pattern, sink = probs[..., :-1].to(v.dtype), probs[..., -1].to(v.dtype)
    z = torch.matmul(pattern, repeat_kv(v, q.shape[1]))
    return scores, pattern, z, sink


def attend_in_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: torch.Tensor | None, scaling: float, *, block: int,
                     softcap: float | None = None, sinks: torch.Tensor | None = None,
                     on_block=None):
    """:func:`attend_with_sink` over blocks of ``block`` query rows: returns ``z, sink`` of the
    whole sequence while holding one block's scores and pattern ``[batch, head, block, key]``
    at a time. ``on_block(start, stop, scores, pattern)`` sees each block's (what a caller
    keeps of them). The softmax is per query row, so blocks change no formula; matrix
    products over fewer rows may round differently in the last bit.

    >>> q = torch.randn(1, 2, 7, 4); k = torch.randn(1, 1, 7, 4); v = torch.randn(1, 1, 7, 4)
    >>> z, _ = attend_in_blocks(q, k, v, None, 0.5, block=3)
    >>> bool(torch.allclose(z, attend(q, k, v, None, 0.5)[2], atol=1e-6))
    True
    """
    n = q.shape[-2]
    z = sink = None
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows = mask if mask is None or mask.shape[-2] == 1 else mask[..., start:stop, :]
        scores, pattern, z_rows, sink_rows = attend_with_sink(
            q[..., start:stop, :], k, v, rows, scaling, softcap=softcap, sinks=sinks)
        if z is None:
            z = z_rows.new_empty((*z_rows.shape[:-2], n, z_rows.shape[-1]))
            sink = sink_rows.new_empty((*sink_rows.shape[:-1], n))
        z[..., start:stop, :] = z_rows
        sink[..., start:stop] = sink_rows
        if on_block is not None:
            on_block(start, stop, scores, pattern)
        scores = pattern = None
    return z, sink


def head_output_weights(w_o: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Split W_O (nn.Linear layout ``[d_model, head * d_head]``) into per-head slices.

    Returns ``[head, d_head, d_model]`` so that ``f_h(x_j) = v_j @ W[h]``.
    """
    return rearrange(w_o, "d_model (head d_head) -> head d_head d_model", head=n_heads)


def value_norm_factor(w_o: torch.Tensor, n_heads: int) -> torch.Tensor:
    """What value norms need from W_O, in float64: ``F`` ``[head, d_head, rank]`` with
    ``||v W_O^h|| = ||v F_h||`` for every vector v.

    ``F_h = R_h^T`` from the QR decomposition ``W_O^h^T = Q_h R_h`` (Q_h has orthonormal
    columns, so it drops out of the norm). It depends on the weights only, so a caller may
    compute it once and reuse it while W_O is unchanged (as :class:`probe.AttentionProbe` does).
    Norms through F are sums of squares, with no cancellation, unlike the quadratic form of the
    Gram matrix ``v W W^T v^T``; a zero (ablated) head gives F_h = 0 and norms 0.

    >>> w_o = torch.randn(6, 2 * 3, dtype=torch.float64); v = torch.randn(1, 2, 4, 3, dtype=torch.float64)
    >>> bool(torch.allclose(value_norms_with(v, value_norm_factor(w_o, 2)),
    ...                     value_vectors(v, w_o, 2).norm(dim=-1)))
    True
    """
    w = head_output_weights(w_o.detach().to(torch.float64), n_heads)  # [head, d_head, d_model]
    r = torch.linalg.qr(w.transpose(-1, -2), mode="r").R  # [head, rank, d_head]
    return r.transpose(-1, -2).contiguous()


def value_norms_with(v: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``||f_h(x_j)||`` ``[batch, head, token]`` from values ``[batch, kv_head, token, d_head]``
    and :func:`value_norm_factor` (any dtype and device; it is cast to the computing dtype).

    Computed in float32 for half-precision values (returned in their dtype), otherwise in the
    values' dtype; kv heads are not repeated: each is multiplied by its group's factors.
    """
    n_heads, n_kv = factor.shape[0], v.shape[1]
    compute = torch.float32 if v.dtype in (torch.float16, torch.bfloat16) else v.dtype
    f = factor.to(device=v.device, dtype=compute)
    f = f.view(n_kv, n_heads // n_kv, *f.shape[1:])  # [kv_head, group, d_head, rank]
    u = torch.matmul(v.to(compute).unsqueeze(2), f)  # [batch, kv_head, group, token, rank]
    return torch.linalg.vector_norm(u, dim=-1).flatten(1, 2).to(v.dtype)


def value_norms(v: torch.Tensor, w_o: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``||f_h(x_j)||`` for every head and token: ``[batch, head, token]``.

    ``f_h(x_j) = v_j W_O^h`` is value vector j (bias included) mapped through head h's slice of
    the output projection (Kobayashi et al. 2020). From scratch: :func:`value_norm_factor` (in
    float64) then :func:`value_norms_with`; that is d_model / d_head times less work per token
    than forming every f_h(x_j), and the factor can be kept while W_O does not change.
    """
    check_output_weight(w_o, n_heads, v.shape[-1])
    return value_norms_with(v, value_norm_factor(w_o.to(v.device), n_heads))


def check_output_weight(w_o: torch.Tensor, n_heads: int, d_head: int) -> None:
    """Refuse a W_O whose input size is not ``n_heads * d_head``."""
    if w_o.shape[-1] != n_heads * d_head:
        raise UnsupportedModelError(
            f"the output projection takes {w_o.shape[-1]} inputs but the attention produces "
            f"{n_heads} heads x {d_head} = {n_heads * d_head}; it is not this "
            "attention's W_O, so value norms cannot be computed")


def value_weighted(pattern, value_norm):
    """``||alpha_hij f_h(x_j)|| = alpha_hij * ||f_h(x_j)||`` (alpha is non-negative).

    pattern ``[..., head, query, key]`` and value_norm ``[..., head, key]``; works on torch
    tensors and numpy arrays alike.

    >>> import numpy as np
    >>> value_weighted(np.full((1, 2, 2), 0.5), np.array([[1.0, 4.0]]))
    array([[[0.5, 2. ],
            [0.5, 2. ]]])
    """
    return pattern * value_norm[..., None, :]


def value_vectors(v: torch.Tensor, w_o: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Every ``f_h(x_j)``: ``[batch, head, token, d_model]`` (for checks and small inputs)."""
    return torch.einsum("bhtd,hdm->bhtm", repeat_kv(v, n_heads), head_output_weights(w_o, n_heads))
