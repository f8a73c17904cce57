"""Attribution patching: one backward pass approximates every head's z-patch effect.

For a pair, the first-order estimate of patching head (l, h) at the pair's positions is

    a[l, h] = sum over patched (t, s) of  dM/dz[l, h, t] . (z_source[l, h, s] - z_target[l, h, t])

divided by the gap (M: the patcher's metric of the target run, cosine with the source's
embedding or the target token's logit). The gradient is taken at the target's own z of every
layer at once (a zero offset that requires grad is added to each layer's z inside the
backend), with :func:`torch.autograd.grad`, so no parameter's ``.grad`` is touched.
:func:`screen` ranks heads by the attribution, runs the exact sweep on the top ones and
reports how well the two agree.

Imports numpy, torch and :mod:`probe.inputs` (inside functions, :mod:`probe.patch_pairs` and
scipy.stats).
"""

from __future__ import annotations

import numpy as np
import torch

from .inputs import pad, pad_id_of


def attribution(pt, setups, *, batch: int = 16) -> np.ndarray:
    """Normalised attribution estimates ``[pair, layer, head]`` (NaN: skipped or small gap)."""
    out = np.full((len(setups), pt.n_layers, pt.n_heads), np.nan)
    used = [i for i, s in enumerate(setups) if not s.status]
    for start in range(0, len(used), batch):
        chunk = used[start:start + batch]
        sources = pt.source([setups[i].source_ids for i in chunk])
        ids, mask = pad([setups[i].target_ids for i in chunk], pad_id_of(pt.tokenizer), pt.device)
        offsets, zs = {}, {}

        def hook(layer, pattern, value, z):
            offsets[layer] = torch.zeros_like(z, requires_grad=True)
            zs[layer] = z.detach()
            return pattern, z + offsets[layer]

        pt.probe.intervention = hook
        try:
            with torch.enable_grad():
                readout = pt.readout.read(pt.model(input_ids=ids, attention_mask=mask, **pt.forward_options), ids, mask)
                scores = torch.stack([pt.readout.score(readout[j:j + 1], sources[j].readout, setups[i].target_token)[0]
                                      for j, i in enumerate(chunk)])
                layers = sorted(offsets)
                grads = torch.autograd.grad(scores.sum(), [offsets[layer] for layer in layers])
        finally:
            pt.probe.intervention = None
        with torch.inference_mode():
            base = pt.forward([setups[i].target_ids for i in chunk])
        for j, i in enumerate(chunk):
            s = setups[i]
            t_pos, s_pos = torch.as_tensor(s.query[0]), torch.as_tensor(s.query[1])
            gap = float(pt.readout.score(sources[j].readout[None], sources[j].readout, s.target_token)[0]
                        - pt.readout.score(base[j:j + 1], sources[j].readout, s.target_token)[0])
            if abs(gap) < pt.readout.min_gap:
                continue
            for layer, g in zip(layers, grads):
                delta = sources[j].z[layer][:, s_pos] - zs[layer][j][:, t_pos]   # [head, n, d_head]
                out[i, layer] = ((g[j][:, t_pos] * delta).sum((-1, -2)) / gap).double().cpu().numpy()
    return out


def screen(pt, setups, *, top: int = 10, component: str = "z", batch_rows: int = 192) -> dict:
    """Rank heads by mean attribution, patch the ``top`` ones exactly, report the agreement.

    Returns ``{"attribution": [pair, layer, head], "heads": [(layer, head), ...],
    "exact": [pair, len(heads)], "spearman": rho between the two mean effects over the top
    heads, "pair_spearman": rho over every (pair, head) of the top heads}``.
    """
    from scipy.stats import spearmanr

    from .patch_pairs import sweep

    approx = attribution(pt, setups)
    mean = np.nanmean(approx, axis=0)
    order = np.argsort(-np.abs(np.nan_to_num(mean)), axis=None)[:top]
    heads = [tuple(int(x) for x in np.unravel_index(k, mean.shape)) for k in order]
    result = sweep(pt, setups, [(component, layer, (head,)) for layer, head in heads], batch_rows=batch_rows)
    exact = result.effects
    a = np.stack([approx[:, layer, head] for layer, head in heads], axis=1)
    ok = np.isfinite(a) & np.isfinite(exact)
    rho_heads = (spearmanr(np.nanmean(a, 0), np.nanmean(exact, 0))[0] if len(heads) >= 3 else np.nan)
    rho_pairs = spearmanr(a[ok], exact[ok])[0] if ok.sum() >= 3 else np.nan
    return {"attribution": approx, "heads": heads, "exact": exact,
            "spearman": float(rho_heads), "pair_spearman": float(rho_pairs)}
