"""Per-pattern metrics: pure numpy functions over ``[..., query, key]`` attention patterns.

Leading axes (example, layer, head, ...) pass through, so each function is vectorised over
whatever stack of patterns it is given.

>>> import numpy as np
>>> uniform = np.full((2, 4, 4), 0.25)          # [head, query, key]
>>> np.allclose(mean_row_entropy(uniform), np.log(4))
True
>>> first_token_attention(uniform).tolist()
[0.25, 0.25]
"""

from __future__ import annotations

import numpy as np


def row_entropy(pattern: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each query row: ``[..., query, key] -> [..., query]``.

    ``H_i = -sum_j a_ij log a_ij`` with ``0 log 0 = 0``; at most ``log(number of keys)``.
    """
    p = np.asarray(pattern, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(-1)


def mean_row_entropy(pattern: np.ndarray) -> np.ndarray:
    """Mean over query rows of :func:`row_entropy`: ``[..., query, key] -> [...]``.

    A sum over rows would grow with sentence length and is not an entropy; the mean is
    comparable with the uniform bound ``log(n_keys)``.
    """
    return row_entropy(pattern).mean(-1)


def first_token_attention(pattern: np.ndarray) -> np.ndarray:
    """Mean over queries of the weight on key 0 ([CLS] or BOS): ``[..., query, key] -> [...]``."""
    return np.asarray(pattern, dtype=np.float64)[..., :, 0].mean(-1)
