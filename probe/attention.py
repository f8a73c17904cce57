"""Pure attention math on batched tensors; no hooks, no model.

Shapes use the project's axis words: ``batch head kv_head query key token d_head d_model``.

>>> import torch
>>> q = torch.randn(1, 4, 5, 8); k = torch.randn(1, 2, 5, 8); v = torch.randn(1, 2, 5, 8)
>>> scores, pattern, z = attend(q, k, v, mask=None, scaling=8 ** -0.5)
>>> tuple(pattern.shape), bool(torch.allclose(pattern.sum(-1), torch.ones(1, 4, 5)))
((1, 4, 5, 5), True)
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat


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
           scaling: float):
    """Eager attention, step by step, as transformers' eager functions compute it.

    q: ``[batch, head, query, d_head]``; k, v: ``[batch, kv_head, key, d_head]``;
    mask: additive ``[batch, 1, query, key]`` or None.
    Returns ``scores`` (scaled, mask added), ``pattern`` (softmax over keys, computed in
    float32 and cast back like the Llama family does) and ``z = pattern @ v``
    ``[batch, head, query, d_head]``.
    """
    n_heads = q.shape[1]
    k_all = repeat_kv(k, n_heads)
    v_all = repeat_kv(v, n_heads)
    scores = torch.matmul(q, k_all.transpose(-1, -2)) * scaling
    if mask is not None:
        scores = scores + mask
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    z = torch.matmul(pattern, v_all)
    return scores, pattern, z


def head_output_weights(w_o: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Split W_O (nn.Linear layout ``[d_model, head * d_head]``) into per-head slices.

    Returns ``[head, d_head, d_model]`` so that ``f_h(x_j) = v_j @ W[h]``.
    """
    return rearrange(w_o, "d_model (head d_head) -> head d_head d_model", head=n_heads)


def value_norms(v: torch.Tensor, w_o: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``||f_h(x_j)||`` for every head and token: ``[batch, head, token]``.

    ``f_h(x_j) = v_j W_O^h`` is value vector j (bias included) mapped through head h's slice of
    the output projection (Kobayashi et al. 2020). Computed through the per-head Gram matrix
    ``G_h = W_O^h W_O^h^T`` (``[d_head, d_head]``), since ``||v W||^2 = v G v^T``; that is
    d_model / d_head times less work than forming every f_h(x_j). The Gram matrix is formed in
    float64 so the only rounding left is that of the final quadratic form.
    """
    w = head_output_weights(w_o, n_heads).to(torch.float64)
    gram = torch.einsum("hdm,hem->hde", w, w).to(v.dtype)
    v_all = repeat_kv(v, n_heads)
    vg = torch.einsum("bhtd,hde->bhte", v_all, gram)
    sq = (vg * v_all).sum(-1)
    return sq.clamp_min(0).sqrt()


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
