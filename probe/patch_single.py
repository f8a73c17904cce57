"""One pair or one set of heads at a time: what :class:`~probe.patching.Patcher`'s ``effect``,
``ablate`` and ``patch`` build. ``effect`` patches heads of one target from one source and
normalises the change; ``ablate`` and ``patch`` build the :class:`~probe.patch_ops.Ops` that
their ``with`` blocks apply. Batched sweeps over many pairs are :mod:`probe.patch_pairs`'.

One job: these three. Imports numpy, torch, :mod:`probe.errors`, :mod:`probe.patch_pairs` (pair
setups) and :mod:`probe.patch_ops`; the Patcher is passed in, never imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import InputError
from .patch_ops import Ops
from .patch_pairs import pair_setup

ABLATIONS = ("zero", "mean", "resample")


@dataclass
class PatchResult:
    """One patch of one pair: the normalised effect and everything it is computed from."""

    effect: float            # (patched - base) / (source - base); NaN when small_gap
    gap: float               # source - base (embedding: 1 - cos(base, source))
    small_gap: bool          # |gap| < min_gap: not normalised
    raw: float               # patched - base, unnormalised
    metric: str              # embedding or logit
    positions: list = field(default_factory=list)  # (target, source) positions patched

    def _repr_html_(self) -> str:
        value = "not normalised (gap too small)" if self.small_gap else f"{self.effect:.3f}"
        return (f"<p>patch effect ({self.metric}): <b>{value}</b>, gap {self.gap:.4f}, raw "
                f"{self.raw:.4f}, {len(self.positions)} positions patched; one pair: descriptive, "
                "no test</p>")


def pair_effect(pt, target: str, source: str, heads, *, component: str, positions,
                target_token: str | None) -> PatchResult:
    """Patch ``heads`` of ``target`` from ``source`` with the Patcher ``pt``; the effect."""
    setup, src, ops = _pair_ops(pt, target, source, heads, component, positions, [0],
                                target_token)
    base = pt.forward([setup.target_ids])
    patched = pt.forward([setup.target_ids], ops)
    score = pt.readout.score
    s_src = score(src.readout[None], src.readout, setup.target_token)[0]
    s_base = score(base, src.readout, setup.target_token)[0]
    s_patch = score(patched, src.readout, setup.target_token)[0]
    gap, raw = float(s_src - s_base), float(s_patch - s_base)
    small = abs(gap) < pt.readout.min_gap
    return PatchResult(np.nan if small else raw / gap, gap, small, raw, pt.readout.metric,
                       list(zip(setup.query[0].tolist(), setup.query[1].tolist())))


def patch_ops(pt, target: str, source: str, heads, *, component: str, positions) -> Ops:
    """The interventions that patch ``heads`` of every row of ``target`` from ``source``."""
    return _pair_ops(pt, target, source, heads, component, positions, None, None)[2]


def ablation_ops(pt, heads, mode: str, *, reference=None, source: str | None = None) -> Ops:
    """The interventions that ablate ``heads`` at every position: ``zero`` (z = 0), ``mean``
    (z = its mean over the tokens of the ``reference`` texts) or ``resample`` (z of the
    ``source`` text, position by position; positions past its length keep their own z)."""
    if mode not in ABLATIONS:
        raise InputError(f"ablation mode must be one of {', '.join(ABLATIONS)}, not {mode!r}")
    for layer, head in heads:
        pt.check_head(layer, head)
    ops = Ops()
    if mode == "mean":
        if not reference:
            raise InputError("mean ablation needs reference texts: ablate(..., reference=[...])")
        srcs = pt.source(pt.encode(reference))
        for layer, head in heads:
            ops.add_broadcast(layer, head, None, torch.cat([s.z[layer, head] for s in srcs]).mean(0))
    elif mode == "resample":
        if source is None:
            raise InputError("resample ablation needs a source text: ablate(..., source='...')")
        src = pt.source(pt.encode([source]))[0]
        for layer, head in heads:
            ops.add_broadcast(layer, head, torch.arange(len(src.ids)), src.z[layer, head])
    else:
        for layer, head in heads:
            ops.add_broadcast(layer, head, None, None)
    return ops.finish(pt.device)


def _pair_ops(pt, target, source, heads, component, positions, rows, target_word):
    """``(setup, source run, ops)`` of a one-pair patch (``rows`` None: every row)."""
    setup = pair_setup(pt, "pair", target, source, positions=positions, target_word=target_word)
    if setup.status:
        raise InputError(f"cannot patch this pair: {setup.status}")
    for layer, head in heads:
        pt.check_head(layer, head, component)
    src = pt.source([setup.source_ids])[0]
    ops = Ops()
    for layer, head in heads:
        ops.add_patch(component, layer, head, rows, setup, src, pt.n_heads // pt.n_kv_heads)
    return setup, src, ops.finish(pt.device)


__all__ = ["ABLATIONS", "PatchResult", "ablation_ops", "pair_effect", "patch_ops"]
