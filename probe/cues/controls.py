"""Matched controls: the counterfactual with each cue replaced by a neutral word of the same
kind ("not" -> "really", "never" -> "often", "unhappy" -> "really happy"), so that a study can
subtract the effect of inserting or changing any word at that place.

One job: :class:`Control` and :func:`build_control`, deterministic for a seed and a key.
Imports the standard library and the package's ``words`` and ``detect``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .detect import Cue
from .words import (ADVERBS, AFFIX_ADVERBS, AUX_STEMS, CONTRACTIONS, DETERMINERS, MULTIWORD, SWAPS,
                    Word, affix_of, word_diff)


@dataclass(frozen=True)
class Control:
    """A matched control sentence, or ``text=None`` and the reason none could be built."""

    text: str | None
    reason: str
    edit: str


def _neutral(text: str, nxt: str, other_words: list[Word]) -> tuple[str, ...]:
    """Non-negating words that can stand where the cue `text` stands (empty: none known)."""
    low = text.lower().replace("’", "'")
    words = low.split()
    if tuple(words) in MULTIWORD:
        return MULTIWORD[tuple(words)]
    if low.startswith("non-") and len(low) > 4:
        return tuple(f"{a} {text[4:]}" for a in AFFIX_ADVERBS)
    if len(words) != 1:
        return ()
    w = words[0]
    if w == "not":
        return ADVERBS
    if w.endswith("n't") or w in CONTRACTIONS:
        stem = w[:-3] if w.endswith("n't") else w[:-2]
        aux = text[:len(stem)] if stem not in AUX_STEMS else AUX_STEMS[stem]
        return tuple(f"{aux} {a}".strip() for a in ADVERBS)
    if w == "no":
        return DETERMINERS[nxt.endswith("s")]
    if w in SWAPS:
        return SWAPS[w]
    hit = affix_of(w, [o.low for o in other_words])
    if hit is None:
        return ()
    if hit[0] == "less":
        return tuple(f"very {o.text}" for o in other_words if o.low == hit[1])[:1]
    return tuple(f"{a} {text[len(hit[0]):]}" for a in AFFIX_ADVERBS)


def _pick(seed: int, key: str, i: int, word: str, n: int) -> int:
    digest = hashlib.sha256(f"{seed}\x1f{key}\x1f{i}\x1f{word}".encode()).hexdigest()
    return int(digest, 16) % n


def build_control(original: str, counterfactual: str, cue: Cue, *, seed: int = 0,
                  key: str = "") -> Control:
    """The counterfactual with each cue span replaced by a neutral word of the same kind.

    Only counterfactual-side cues get a control: a moved word has no single place, and a
    negation present only in the original is not an edit the counterfactual makes.

    >>> from probe.cues import detect_cue
    >>> o, c = "The robin is a bird.", "The robin isn't a bird."
    >>> build_control(o, c, detect_cue(o, c), key="neg-0001")
    Control(text='The robin is really a bird.', reason='', edit='is really')
    >>> build_control("He smokes.", "He never smokes.", detect_cue("He smokes.", "He never smokes.")).text
    'He often smokes.'
    >>> build_control("A", "B", detect_cue("A", "A")).reason
    'no cue'
    """
    if not cue.spans and not cue.original_spans:
        return Control(None, "no cue", "")
    if cue.side == "both":
        return Control(None, f"moved word {cue.text!r}: no single place for a control", "")
    if cue.side == "original":
        return Control(None, f"negation {cue.text!r} only in the original: the counterfactual "
                             "removes it, so there is no inserted cue to neutralise", "")
    ow, cw, o_diff, _, place = word_diff(original, counterfactual)
    other = [ow[i] for i in o_diff]
    options = []
    for i, (a, b) in enumerate(cue.spans):
        inside = [j for j, w in enumerate(cw) if w.start < b and a < w.stop]
        nxt = cw[inside[-1] + 1].low if inside and inside[-1] + 1 < len(cw) else ""
        here = {p for j in inside for p in place.get(j, [])}
        text = counterfactual[a:b]
        neutral = _neutral(text, nxt, other)
        cands = [c for c in neutral if c.lower() not in here]
        if not neutral:
            return Control(None, f"cue class {cue.cls} {text!r} has no neutral counterpart", "")
        if not cands:
            return Control(None, f"the neutral counterparts of {text!r} {neutral} are the original's "
                                 "word at that place (the pair is already a minimal swap)", "")
        if text[:1].isupper():
            cands = [c[0].upper() + c[1:] for c in cands]
        options.append((a, b, cands, _pick(seed, key, i, text.lower(), len(cands))))
    for r in range(max(len(c) for _, _, c, _ in options)):
        out, edits = counterfactual, []
        for a, b, cands, start in reversed(options):
            edits.insert(0, cands[(start + r) % len(cands)])
            out = out[:a] + edits[0] + out[b:]
        if out not in (original, counterfactual):
            return Control(out, "", " ".join(edits))
    return Control(None, "every neutral edit reproduces the original or the counterfactual", "")
