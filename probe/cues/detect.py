"""Finding the negation cue of a pair: the words that carry the negation, given or detected.

Cues are found on a word-level diff (``difflib``, lower-cased words) and classed as
``syntactic`` (not, n't, no, never, ...), ``affixal`` (un-, in-, im-, ir-, il-, dis-, non-,
-less: only when the stem stands on the other side), ``lexical`` (rarely, fail, lack, deny,
...), ``contraction`` (apostrophe-less: dont, isnt, ...) or ``moved`` (a word deleted in one
place and inserted in another). Not cues, by decision: "nothing but", "no doubt", "no wonder",
"none other", "not only ... but", and "unless" (a connective that replaces "if"; it has no
neutral counterpart at the same place).

One job: :class:`Cue` and :func:`detect_cue`. Imports the standard library, ``probe.errors``
and the package's ``words``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InputError
from .words import (CONTRACTIONS, LEXICAL, MULTIWORD, NEAR_MISSES, SYNTACTIC, Word, affix_of,
                    word_diff)

_SPAN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class Cue:
    """The negation cue of a pair: its text, class, where it came from and its character spans.

    >>> Cue("not", "syntactic", "detected", ((7, 10),), ()).side
    'counterfactual'
    """

    text: str
    cls: str | None
    source: str  # "given", "detected" or "none"
    spans: tuple[tuple[int, int], ...]  # in the counterfactual
    original_spans: tuple[tuple[int, int], ...]  # in the original

    @property
    def side(self) -> str | None:
        if self.spans and self.original_spans:
            return "both"
        return "counterfactual" if self.spans else "original" if self.original_spans else None


def _classify(words: list[Word], k: int, other, other_all) -> tuple[str, int] | None:
    """(class, index of the cue's last word) when words[k] starts a negation cue, else None."""
    w = words[k].low
    nxt = words[k + 1].low if k + 1 < len(words) else ""
    if (w, nxt) in MULTIWORD:
        return "syntactic", k + 1
    if w in SYNTACTIC or w.endswith("n't"):
        if (w, nxt) in NEAR_MISSES or (w == "not" and nxt == "only"
                                       and any(x.low == "but" for x in words[k + 2:])):
            return None
        return "syntactic", k
    if w in CONTRACTIONS:
        return "contraction", k
    if w in LEXICAL:
        return "lexical", k
    if w == "non" and nxt == "-" and k + 2 < len(words) and words[k + 2].low in other_all:
        return "affixal", k + 2
    return ("affixal", k) if affix_of(w, other) else None


def _side_cues(words, diff, other, other_all, exclude=frozenset()):
    found, taken = [], set()
    for k in diff:
        if k not in taken and words[k].low not in exclude:
            hit = _classify(words, k, other, other_all)
            if hit:
                found.append((hit[0], (words[k].start, words[hit[1]].stop)))
                taken.update(range(k, hit[1] + 1))
    return found


def _given(original: str, counterfactual: str, given) -> Cue:
    m = _SPAN.match(given) if isinstance(given, str) else None
    if not isinstance(given, str):
        try:
            start, stop = (int(x) for x in given)
        except (TypeError, ValueError):
            raise InputError(f"cue {given!r} is neither a text nor a [start, stop] character span; "
                             "give the cue as written in the counterfactual, or two integers") from None
    elif m:
        start, stop = int(m[1]), int(m[2])
    if m or not isinstance(given, str):
        if not 0 <= start < stop <= len(counterfactual):
            raise InputError(f"cue span {start}:{stop} is outside the counterfactual {counterfactual!r} "
                             f"(length {len(counterfactual)}); give 0 <= start < stop <= length")
        return Cue(counterfactual[start:stop], "given", "given", ((start, stop),), ())
    g = given.strip()
    pattern = re.compile(("(?<!\\w)" if g[:1].isalnum() else "") + re.escape(g)
                         + ("(?!\\w)" if g[-1:].isalnum() else ""), re.IGNORECASE)
    for text, cf_side in ((counterfactual, True), (original, False)):
        if g and (found := pattern.search(text)):
            span = ((found.start(), found.end()),)
            return Cue(found.group(), "given", "given", span if cf_side else (), () if cf_side else span)
    raise InputError(f"cue {given!r} is in neither the counterfactual {counterfactual!r} nor the "
                     f"original {original!r}; give the cue as written there, or a 'start:stop' span")


def detect_cue(original: str, counterfactual: str, given=None) -> Cue:
    """The negation cue of a pair: given (a text or a character span) or detected on the diff.

    >>> detect_cue("She is happy.", "She is unhappy.").cls
    'affixal'
    >>> detect_cue("He likes it.", "He dont like it.").text
    'dont'
    >>> cue = detect_cue("The dog is not here.", "The dog is here.")
    >>> cue.text, cue.side, cue.original_spans
    ('not', 'original', ((11, 14),))
    >>> detect_cue("I think he is not coming.", "I do not think he is coming.").side
    'both'
    >>> detect_cue("He wrote a letter.", "He wrote a note.")
    Cue(text='', cls=None, source='none', spans=(), original_spans=())
    >>> detect_cue("A b.", "A not b.", given="2:5").text
    'not'
    """
    if given is not None:
        return _given(original, counterfactual, given)
    ow, cw, o_diff, c_diff, _ = word_diff(original, counterfactual)
    o_low, c_low = [ow[i].low for i in o_diff], [cw[j].low for j in c_diff]
    moved = {w for w in set(o_low) & set(c_low) if w[:1].isalnum()}
    cf = _side_cues(cw, c_diff, o_low, {w.low for w in ow}, moved)
    if cf:
        spans = tuple(s for _, s in cf)
        return Cue(" ".join(counterfactual[a:b] for a, b in spans), cf[0][0], "detected", spans, ())
    orig = _side_cues(ow, o_diff, c_low, {w.low for w in cw}, moved)
    if orig:
        spans = tuple(s for _, s in orig)
        return Cue(" ".join(original[a:b] for a, b in spans), orig[0][0], "detected", (), spans)
    if not moved:
        return Cue("", None, "none", (), ())
    classes = {j: _classify([cw[j]], 0, (), ()) for j in c_diff if cw[j].low in moved}
    neg = [(j, hit[0]) for j, hit in classes.items() if hit]
    words, cls = ({cw[j].low for j, _ in neg}, neg[0][1]) if neg else (moved, "moved")
    spans = tuple((cw[j].start, cw[j].stop) for j in c_diff if cw[j].low in words)
    o_spans = tuple((ow[i].start, ow[i].stop) for i in o_diff if ow[i].low in words)
    return Cue(" ".join(counterfactual[a:b] for a, b in spans), cls, "detected", spans, o_spans)
