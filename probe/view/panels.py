"""The numbers a view shows: per panel, every layer's and head's pattern (and value-weighted
pattern) quantised to 8 bits per cell, and for a pair the difference panel on the aligned
tokens.

One job: examples in, JSON-ready panel dicts out (no HTML). Imports numpy, ``probe.names`` and
``probe.align``.
"""

from __future__ import annotations

import base64

import numpy as np

from .. import names
from ..align import align


def _quantise(stack: np.ndarray, signed: bool = False) -> dict:
    """[layer, head, n, n] -> base64 uint8 per cell and a scale per (layer, head)."""
    stack = np.asarray(stack, dtype=np.float64)
    scale = np.abs(stack).max(axis=(-1, -2))
    scale = np.where(scale > 0, scale, 1.0)
    unit = stack / scale[..., None, None]
    q = np.round((unit + 1) * 127.5) if signed else np.round(unit * 255)
    return {"data": base64.b64encode(q.clip(0, 255).astype(np.uint8).tobytes()).decode("ascii"),
            "scale": scale.round(6).tolist(), "signed": signed}


def pattern_panel(name: str, tokens, pattern, vw=None) -> dict:
    """A panel of one example: its tokens and ``pattern`` (and ``vw``) ``[layer, head, n, n]``."""
    panel = {"name": name, "kind": "pattern", "tokens": list(tokens), "raw": _quantise(pattern)}
    if vw is not None:
        panel["vw"] = _quantise(vw)
    return panel


def layer_stack(example, component, layers):
    """``component`` of ``example`` at each of ``layers``, stacked: ``[layer, head, n, n]``."""
    return np.stack([example[names.key(layer, component)] for layer in layers])


def difference_panel(example, other, layers, has_vw) -> dict:
    """counterfactual - original on the aligned (matched) tokens: inserted, deleted and replaced
    tokens (the cue) have no partner, so their rows and columns are left out and named."""
    al = align(example.tokens, other.tokens)
    mo, mc = al.matched_original, al.matched_counterfactual
    left_out = ([f"{other.tokens[j]} (#{j}, counterfactual)" for j in sorted(set(range(len(other.tokens)))
                                                                          - set(mc.tolist()))]
                + [f"{example.tokens[i]} (#{i}, original)" for i in sorted(set(range(len(example.tokens)))
                                                                         - set(mo.tolist()))])

    def diff(component):
        a, b = layer_stack(example, component, layers), layer_stack(other, component, layers)
        return b[..., mc[:, None], mc[None, :]] - a[..., mo[:, None], mo[None, :]]

    panel = {"name": "difference", "kind": "difference", "tokens": [other.tokens[j] for j in mc],
             "index_original": mo.tolist(), "index_counterfactual": mc.tolist(),
             "left_out": left_out, "raw": _quantise(diff("pattern"), signed=True)}
    if has_vw:
        panel["vw"] = _quantise(diff("value_weighted"), signed=True)
    return panel
