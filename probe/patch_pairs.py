"""Pairs prepared for patching, and the batched sweep over layers and heads.

:func:`pair_setup` tokenises one (target, source) pair, aligns it and decides which target
positions are patched from which source positions (see :mod:`probe.patching`). A pair whose
sides share no content token ("no aligned content tokens") or that has no position to patch
under the chosen positions is reported with that status and skipped.

:func:`sweep` patches every chosen head of every pair, one head per batch row: the source and
base runs are batched, and the patched rows of layer l for several pairs go in one forward
that runs the layers below l once per pair and repeats each pair's hidden states once per head
from block l on (:func:`probe.patch_ops.expand_hook`); where a model's forward does not allow
that, every row runs the whole model (same results, slower); what it found is a
:class:`~probe.patch_result.SweepResult`.

One job: pairs made ready to patch, and the sweep over them. Imports numpy, :mod:`probe.align`,
:mod:`probe.cues`, :mod:`probe.design`, :mod:`probe.errors`, :mod:`probe.pairs`,
:mod:`probe.patch_ops` and :mod:`probe.patch_result`.

>>> correspondence(["[CLS]", "a", "is", "x", "[SEP]"], ["[CLS]", "a", "is", "not", "x", "[SEP]"])
([0, 1, 2, 3, 4], [0, 1, 2, 4, 5])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .align import align, is_special
from .cues import detect_cue, token_char_spans, tokens_in_spans
from .design import NO_KIND, Exclusion, Why
from .errors import InputError
from .pairs import Label, Side
from .patch_ops import Ops
from .patch_result import SweepResult


class Positions(Label):
    """Which target positions a pair patches (``--positions``; a list of token positions
    is the fourth choice)."""

    ALL = "all"            # every position with a counterpart in the source
    ALIGNED = "aligned"    # aligned content tokens, the cue left out
    CUE = "cue"            # the cue's tokens


POSITIONS = tuple(p.value for p in Positions)


@dataclass
class PairSetup:
    """One pair ready to patch: token ids, which positions map where, and its status."""

    id: str
    kind: str
    cluster: str
    target_ids: list[int]
    source_ids: list[int]
    target_tokens: list[str]
    source_tokens: list[str]
    query: tuple[np.ndarray, np.ndarray]   # (target positions, source positions) patched
    keys: tuple[np.ndarray, np.ndarray]    # full correspondence, for pattern keys
    target_token: int | None = None
    status: str = ""                       # "" when used, else why the pair is skipped


def correspondence(target: list[str], source: list[str]) -> tuple[list[int], list[int]]:
    """Target and source positions that correspond: matched tokens, and replaced spans of
    equal length position by position."""
    a = align(target, source)
    pairs = [tuple(m) for m in a.matched.tolist()]
    for t, s in a.replaced:
        if len(t) == len(s):
            pairs.extend(zip(t, s))
    pairs.sort()
    return [int(t) for t, _ in pairs], [int(s) for _, s in pairs]


def _positions(positions) -> Positions | list[int]:
    """``positions`` checked: a :class:`Positions` or a list of token positions."""
    if isinstance(positions, str):
        if positions not in POSITIONS:
            raise InputError(f"positions must be one of {', '.join(POSITIONS)}, a position or a "
                             f"list of positions, not {positions!r}")
        return Positions(positions)
    items = [positions] if isinstance(positions, (int, np.integer)) else list(positions)
    if not items or not all(isinstance(p, (int, np.integer)) and p >= 0 for p in items):
        raise InputError(f"positions must be non-negative token positions, not {positions!r}")
    return [int(p) for p in items]


def pair_setup(patcher, pid, target: str, source: str, *, positions="all", target_word=None,
               cue_spans=None, kind: str = "", cluster: str | None = None) -> PairSetup:
    """Tokenise and align one pair; ``cue_spans``: the cue's character spans in ``target``."""
    chosen_positions = _positions(positions)
    tok = patcher.tokenizer
    t_ids, s_ids = patcher.encode([target, source])
    t_tok, s_tok = tok.convert_ids_to_tokens(t_ids), tok.convert_ids_to_tokens(s_ids)
    special = set(getattr(tok, "all_special_tokens", []) or []) or None
    target_token = patcher.readout.target_id(target_word) if patcher.readout.metric == "logit" else None
    kt, ks = correspondence(t_tok, s_tok)
    setup = PairSetup(str(pid), kind or NO_KIND, str(cluster or pid), t_ids, s_ids, t_tok, s_tok,
                      (np.zeros(0, np.int64), np.zeros(0, np.int64)),
                      (np.array(kt, np.int64), np.array(ks, np.int64)), target_token)
    matched = align(t_tok, s_tok).matched
    content = [int(t) for t, _ in matched if not is_special(t_tok[t], special)]
    if not content:
        setup.status = str(Exclusion(Why.NO_CONTENT))
        return setup
    if chosen_positions is Positions.CUE and cue_spans is None:
        cue_spans = detect_cue(source, target).spans
    cue = set(tokens_in_spans(token_char_spans(target, t_tok), cue_spans or ()))
    if chosen_positions is Positions.ALL:
        keep = set(kt)
    elif chosen_positions is Positions.ALIGNED:
        keep = set(content) - cue
    elif chosen_positions is Positions.CUE:
        keep = cue
    else:
        keep = set(chosen_positions)
        bad = [p for p in keep if p >= len(t_ids)]
        if bad:
            raise InputError(f"pair {pid!r}: position {bad[0]} is past the target's "
                             f"{len(t_ids)} tokens")
    chosen = [(t, s) for t, s in zip(kt, ks) if t in keep]
    if not chosen:
        setup.status = f"no position to patch (positions={positions}: no counterpart in the source)"
        return setup
    setup.query = (np.array([t for t, _ in chosen], np.int64), np.array([s for _, s in chosen], np.int64))
    return setup


def plan_setups(patcher, plans, *, direction="noising", positions="all",
                side=Side.COUNTERFACTUAL):
    """A :class:`PairSetup` per plan; ``side``: the negated side (``counterfactual``) or ``control``.

    noising: target = original, source = the negated side (which heads carry the change);
    denoising: target = the negated side, source = original.
    """
    from .patching import DIRECTIONS

    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    if side not in (Side.COUNTERFACTUAL, Side.CONTROL):
        raise InputError(f"side must be counterfactual or control, not {side!r}")
    side, chosen_positions = Side(side), _positions(positions)
    setups = []
    for plan in plans:
        p = plan.pair
        other = p.counterfactual if side is Side.COUNTERFACTUAL else plan.control
        if plan.exclusion is not None or other is None:
            why = (str(plan.exclusion) if plan.exclusion is not None
                   else f"no control ({plan.control_note})")
            setups.append(PairSetup(p.id, p.kind or NO_KIND, plan.cluster, [], [], [], [],
                                    (np.zeros(0, np.int64),) * 2, (np.zeros(0, np.int64),) * 2, None, why))
            continue
        if direction == "noising":
            target, source, spans = p.original, other, plan.cue.original_spans
        else:
            spans = plan.cue.spans if side is Side.COUNTERFACTUAL else None
            target, source = other, p.original
        if chosen_positions is Positions.CUE and spans is None:
            spans = detect_cue(source, target).spans
        setups.append(pair_setup(patcher, p.id, target, source, positions=positions,
                                 target_word=p.target, cue_spans=spans, kind=p.kind, cluster=plan.cluster))
    return setups


def _chunks(order, size):
    return [order[i:i + size] for i in range(0, len(order), size)]


def sweep(patcher, setups, specs, *, batch_rows: int = 192, per_position: bool = False,
          progress=None) -> SweepResult:
    """Patch every spec ``(component, layer, heads)`` of every usable pair, one spec per row.

    ``per_position``: each spec patches one aligned position at a time; ``raw`` is then
    ``[pair, spec, position index]`` over the pair's query map (NaN past its end).
    """
    group = patcher.n_heads // patcher.n_kv_heads
    for component, layer, heads in specs:
        for head in heads:
            patcher.check_head(layer, head, component if component != "resid" else "z")
    used = [i for i, s in enumerate(setups) if not s.status]
    n = len(setups)
    width = max([len(setups[i].query[0]) for i in used], default=0) if per_position else 1
    raw = np.full((n, len(specs), width) if per_position else (n, len(specs)), np.nan)
    gap = np.full(n, np.nan)
    small = np.zeros(n, dtype=bool)
    order = sorted(used, key=lambda i: -len(setups[i].target_ids))
    sources, s_src, s_base = {}, {}, {}
    for chunk in _chunks(order, 32):
        for i, src in zip(chunk, patcher.source([setups[i].source_ids for i in chunk])):
            sources[i] = src
            s_src[i] = float(patcher.readout.score(src.readout[None], src.readout, setups[i].target_token)[0])
        base = patcher.forward([setups[i].target_ids for i in chunk])
        for j, i in enumerate(chunk):
            s_base[i] = float(patcher.readout.score(base[j:j + 1], sources[i].readout, setups[i].target_token)[0])
            gap[i] = s_src[i] - s_base[i]
            small[i] = abs(gap[i]) < patcher.readout.min_gap
    by_layer: dict[int, list[int]] = {}
    for k, (component, layer, heads) in enumerate(specs):
        by_layer.setdefault(layer, []).append(k)
    for layer, ks in sorted(by_layer.items()):
        slots = [(k, p) for k in ks for p in range(width)]  # (spec, position index) per row
        per_pair = len(slots)
        for chunk in _chunks(order, max(1, batch_rows // per_pair)):
            ops = Ops()
            for a, i in enumerate(chunk):
                for b, (k, pos) in enumerate(slots):
                    if per_position and pos >= len(setups[i].query[0]):
                        continue
                    component, _, heads = specs[k]
                    for head in heads:
                        ops.add_patch(component, layer, head, [a * per_pair + b], setups[i], sources[i],
                                      group, only=pos if per_position else None)
            readout = _patched(patcher, [setups[i].target_ids for i in chunk], ops.finish(patcher.device),
                               layer, per_pair)
            for a, i in enumerate(chunk):
                rows = readout[a * per_pair:(a + 1) * per_pair]
                score = patcher.readout.score(rows, sources[i].readout, setups[i].target_token).cpu().numpy()
                values = score - s_base[i]
                if per_position:
                    m = len(setups[i].query[0])
                    values = values.reshape(len(ks), width)
                    values[:, m:] = np.nan
                    raw[i, ks] = values
                else:
                    raw[i, ks] = values
            if progress is not None:
                progress(len(chunk) * per_pair)
    return SweepResult(setups, list(specs), raw, gap, small, patcher.readout.metric)


def _patched(patcher, rows, ops, layer, repeat):
    """Readouts of ``rows`` each repeated ``repeat`` times, patched by ``ops``."""
    if patcher.reuse and repeat > 1:
        try:
            return patcher.forward(rows, ops, expand=(layer, repeat))
        except (RuntimeError, ValueError, IndexError):  # the model's forward needs equal batches
            patcher.reuse = False
    return patcher.forward([r for r in rows for _ in range(repeat)], ops)


def head_specs(patcher, component="z", heads=None, *, whole_layers=False, residual=False):
    """Specs for a sweep: every (layer, head), or ``heads``; optionally whole layers and block inputs."""
    if heads is None:
        heads = [(layer, h) for layer in range(patcher.n_layers)
                 for h in range(patcher.n_kv_heads if component == "value" else patcher.n_heads)]
    specs = [(component, layer, (head,)) for layer, head in heads]
    if whole_layers:
        specs += [(component, layer, tuple(range(patcher.n_heads if component != "value" else patcher.n_kv_heads)))
                  for layer in range(patcher.n_layers)]
    if residual:
        specs += [("resid", layer, (0,)) for layer in range(patcher.n_layers)]
    return specs


__all__ = ["PairSetup", "SweepResult", "correspondence", "pair_setup", "plan_setups", "sweep",
           "head_specs"]
