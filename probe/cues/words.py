"""The words of negation and their neutral counterparts, and the word-level reading of a pair
that cue detection and controls share: words with their character spans, the word diff, and
affixed words whose stem stands on the other side.

One job: vocabulary and word diff; nothing here decides what the cue is. Imports the standard
library only.
"""

from __future__ import annotations

import difflib
import re
from typing import NamedTuple

SYNTACTIC = frozenset({"not", "no", "never", "none", "nobody", "nothing", "nowhere", "neither",
                       "nor", "without", "cannot"})
MULTIWORD = {("no", "one"): ("someone", "everyone"), ("no", "longer"): ("still",)}
NEAR_MISSES = frozenset({("nothing", "but"), ("no", "doubt"), ("no", "wonder"), ("none", "other")})
CONTRACTIONS = frozenset({"dont", "didnt", "cant", "wont", "isnt", "arent", "wasnt", "werent",
                          "doesnt", "couldnt", "shouldnt", "wouldnt", "hasnt", "havent", "hadnt"})
AUX_STEMS = {"ca": "can", "wo": "will", "sha": "shall", "ai": "is"}  # can't, won't, shan't, ain't
PREFIXES = ("non", "dis", "un", "in", "im", "ir", "il")
ADVERBS = ("really", "also", "still", "surely")
AFFIX_ADVERBS = ("really", "truly")
SWAPS = {  # neutral counterparts of the negation words, by word
    "cannot": ("could", "may", "might", "can"),
    "never": ("often", "usually", "sometimes", "always"),
    "nobody": ("somebody", "everybody"), "nothing": ("something", "everything"),
    "none": ("some", "all"), "nowhere": ("somewhere", "everywhere"),
    "neither": ("either",), "nor": ("or",), "without": ("with",),
    "rarely": ("often", "usually"), "seldom": ("often", "usually"),
    "hardly": ("really", "nearly"), "barely": ("really", "nearly"), "scarcely": ("really", "nearly"),
    "fail": ("try", "manage"), "fails": ("tries", "manages"), "failed": ("tried", "managed"),
    "failing": ("trying", "managing"),
    "lack": ("have",), "lacks": ("has",), "lacked": ("had",), "lacking": ("having",),
    "absent": ("present",),
    "refuse": ("agree", "choose"), "refuses": ("agrees", "chooses"), "refused": ("agreed", "chose"),
    "refusing": ("agreeing", "choosing"),
    "deny": ("confirm",), "denies": ("confirms",), "denied": ("confirmed",), "denying": ("confirming",),
}
LEXICAL = frozenset(SWAPS) - SYNTACTIC
DETERMINERS = {True: ("many", "some", "several"), False: ("one", "the", "this")}
NEGATION_CLASSES = frozenset({"syntactic", "affixal", "lexical", "contraction"})

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|[^\w\s]|_")


class Word(NamedTuple):
    """A word as written, lower-cased (curly apostrophes straightened), and its span."""

    text: str
    low: str
    start: int
    stop: int


def split_words(text: str) -> list[Word]:
    """The words and punctuation marks of ``text``, in order."""
    return [Word(m.group(), m.group().lower().replace("’", "'"), m.start(), m.end())
            for m in _WORD.finditer(text)]


def word_diff(original: str, counterfactual: str):
    """Words of both sides, differing word indices of each, and the original words each
    differing counterfactual word replaces."""
    ow, cw = split_words(original), split_words(counterfactual)
    sm = difflib.SequenceMatcher(None, [w.low for w in ow], [w.low for w in cw], autojunk=False)
    o_diff, c_diff, place = [], [], {}
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag != "equal":
            o_diff += range(i1, i2)
            c_diff += range(j1, j2)
            place.update({j: [ow[i].low for i in range(i1, i2)] for j in range(j1, j2)})
    return ow, cw, o_diff, c_diff, place


def _stem_match(stem: str, other: str) -> bool:
    """`stem` equals `other`, or they share a prefix of 4+ letters that misses at most 2 of the
    shorter one (happiness ~ happy; but until's "til" is not "till")."""
    n = next((i for i, (a, b) in enumerate(zip(stem, other)) if a != b), min(len(stem), len(other)))
    return stem == other or (n >= 4 and n >= min(len(stem), len(other)) - 2)


def affix_of(w: str, other) -> tuple[str, str] | None:
    """(affix, what it negates) when `w` is an affixed word whose stem stands in `other`."""
    for p in PREFIXES:
        if w.startswith(p) and len(w) - len(p) >= 3 and any(_stem_match(w[len(p):], o) for o in other):
            return p, w[len(p):]
    if w.endswith("less") and len(w) >= 7:  # the root stands as a prefix: care-less ~ care-ful
        match = [o for o in other if o.startswith(w[:-4]) and not o.endswith("less")]
        if match:
            return "less", match[0]
    return None
