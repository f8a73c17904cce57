"""The design of a pair study, one row per input pair: cue, control, cluster, duplicates.

Everything here is decided from the pair file alone, before anything is captured, so
``probe cues`` can print it and the study can capture the control sentences it needs:

- the cue: the row's ``cue`` field (``given``), else :func:`probe.cues.detect_cue`
  (``detected``), else none;
- the control, by mode: ``field`` takes the row's ``control``; ``auto`` builds one from the cue
  with :func:`probe.cues.build_control` (deterministic for a seed); ``none`` uses no control.
  The default is ``field`` when any row has a control, else ``auto``. A pair without a control
  is analysed without one, and the reason is recorded;
- the cluster (:func:`probe.pairs.assign_clusters`) and duplicates (:func:`probe.pairs.duplicates`).

The words shared with the study's other modules are enums here: :class:`Controls` (a mode and a
pair's ``control_source``), :class:`PairSet` (the ``set`` of the study's own pairs and of its
baseline) and :class:`Exclusion` (why a pair is left out, as ``pairs.csv`` writes it).

Imports :mod:`probe.cues`, :mod:`probe.errors` and :mod:`probe.pairs`.

>>> from probe.pairs import Pair
>>> plan = plan_pairs([Pair("p1", "The robin is a bird.", "The robin is not a bird.")])[0]
>>> plan.cue.text, plan.cue.source, plan.control_source, plan.control is not None
('not', 'detected', <Controls.AUTO: 'auto'>, True)
"""

from __future__ import annotations

from dataclasses import dataclass

from .cues import Cue, build_control, detect_cue
from .errors import InputError
from .pairs import Label, Pair, assign_clusters, duplicates


class Controls(Label):
    """Where controls come from: a study's mode (``--controls``) and, per pair, its
    ``control_source`` (``none`` when the pair has no control)."""

    AUTO = "auto"
    FIELD = "field"
    NONE = "none"


CONTROL_MODES = tuple(mode.value for mode in Controls)
#: the kind a pair without one is reported under
NO_KIND = "(no kind)"


class PairSet(Label):
    """The sets of pairs the commands write into a study run (the ``set`` of each example); a
    run made through the API may name other sets."""

    PAIRS = "pairs"
    BASELINE = "baseline"


class Why(Label):
    """Why a pair is left out of a study."""

    DUPLICATE = "duplicate"
    NOT_CAPTURED = "not captured (unfinished run)"
    NO_CONTENT = "no aligned content tokens"


@dataclass(frozen=True)
class Exclusion:
    """A pair left out, and why; ``str()`` is its ``excluded`` entry in ``pairs.csv``.

    >>> str(Exclusion(Why.DUPLICATE, "p1")), str(Exclusion(Why.NO_CONTENT))
    ('duplicate of p1', 'no aligned content tokens')
    """

    why: Why
    of: str | None = None  # the pair a duplicate repeats

    def __str__(self) -> str:
        return f"{self.why} of {self.of}" if self.why is Why.DUPLICATE else str(self.why)

#: columns of pairs.csv (one row per input pair), in order
PAIR_COLUMNS = ["set", "id", "kind", "cue", "cue_class", "cue_source", "cluster", "control",
                "control_source", "excluded", "original", "counterfactual"]


@dataclass
class PairPlan:
    """How one input pair enters the study."""

    pair: Pair
    set: str                       # a PairSet, or a set named through the API
    cluster: str
    cue: Cue
    control: str | None = None
    control_source: Controls = Controls.NONE
    control_note: str = ""         # why the pair has no control
    duplicate_of: str | None = None

    @property
    def exclusion(self) -> Exclusion | None:
        """Why the design leaves the pair out (a duplicate), before anything is captured."""
        return None if self.duplicate_of is None else Exclusion(Why.DUPLICATE, self.duplicate_of)

    def row(self, excluded: Exclusion | None = None) -> dict:
        """The pair's row of ``pairs.csv``; ``excluded``: why the study left it out."""
        p = self.pair
        control = self.control if self.control is not None else f"(none: {self.control_note})"
        excluded = excluded or self.exclusion
        return {"set": self.set, "id": p.id, "kind": p.kind or "", "cue": self.cue.text,
                "cue_class": self.cue.cls or "", "cue_source": self.cue.source,
                "cluster": self.cluster, "control": control,
                "control_source": self.control_source, "excluded": str(excluded or ""),
                "original": p.original, "counterfactual": p.counterfactual}


def control_mode(pairs, mode: str | None) -> Controls:
    """The control mode to use: ``mode``, or the default for these pairs."""
    if mode is None:
        return Controls.FIELD if any(p.control for p in pairs) else Controls.AUTO
    if mode not in CONTROL_MODES:
        raise InputError(f"controls must be one of {', '.join(CONTROL_MODES)}, not {mode!r}")
    return Controls(mode)


def cue_of(pair: Pair) -> Cue:
    """The pair's cue (given or detected); a given cue that is not in the text is an error."""
    try:
        return detect_cue(pair.original, pair.counterfactual, given=pair.cue)
    except InputError as err:
        where = f" (line {pair.line})" if pair.line else ""
        raise InputError(f"pair {pair.id!r}{where}: {err}") from None


def plan_pairs(pairs, *, controls: str | None = None, seed: int = 0,
               set_name: str = PairSet.PAIRS) -> list[PairPlan]:
    """One :class:`PairPlan` per pair, in input order."""
    mode = control_mode(pairs, controls)
    clusters = assign_clusters(pairs)
    repeats = duplicates(pairs)
    plans = []
    for i, p in enumerate(pairs):
        plan = PairPlan(p, set_name, clusters[i], cue_of(p), duplicate_of=repeats.get(i))
        if mode is Controls.NONE:
            plan.control_note = "controls: none"
        elif mode is Controls.FIELD:
            if p.control:
                plan.control, plan.control_source = p.control, Controls.FIELD
            else:
                plan.control_note = "the row has no control field"
        else:
            built = build_control(p.original, p.counterfactual, plan.cue, seed=seed, key=p.id)
            if built.text is not None:
                plan.control, plan.control_source = built.text, Controls.AUTO
            else:
                plan.control_note = built.reason
        plans.append(plan)
    return plans


def plan_meta(plan: PairPlan, study: str) -> dict:
    """Per-example metadata that lets the analysis rebuild the plan from the run alone."""
    p = plan.pair
    meta = {"pair_id": p.id, "set": str(plan.set), "study": study, "kind": p.kind, "cluster": plan.cluster,
            "cue": p.cue, "control_source": str(plan.control_source),
            "control_note": plan.control_note or None, "duplicate_of": plan.duplicate_of,
            "target": p.target, "group": p.group, **p.meta}
    return {k: v for k, v in meta.items() if v is not None}


def plan_from_meta(meta: dict, original: str, counterfactual: str, control: str | None) -> PairPlan:
    """The inverse of :func:`plan_meta`, from a run's examples of one pair."""
    reserved = {"pair_id", "side", "set", "study", "kind", "cluster", "cue", "control_source",
                "control_note", "duplicate_of", "target", "group", "truncated", "id"}
    pair = Pair(str(meta["pair_id"]), original, counterfactual, kind=meta.get("kind"),
                target=meta.get("target"), group=meta.get("group"), control=control,
                cue=meta.get("cue"), cluster=meta.get("cluster"),
                meta={k: v for k, v in meta.items() if k not in reserved})
    source = meta.get("control_source", Controls.NONE if control is None else Controls.FIELD)
    return PairPlan(pair, meta.get("set", PairSet.PAIRS), str(meta.get("cluster", pair.id)),
                    cue_of(pair), control, Controls(source), meta.get("control_note", ""),
                    meta.get("duplicate_of"))
