"""Token alignment between the two sides of a pair, and the cue tokens of the edit.

Tokens are compared after normalisation (subword markers ``##``, ``Ġ``, ``▁`` removed,
lower-cased, curly apostrophes straightened) with a longest-matching-block diff. Equal tokens
are *matched* and compared position to position; the rest are *inserted* (only in the
counterfactual), *deleted* (only in the original) or *replaced* (a span of one side
replaced by a span of the other).

Cue tokens are the edited tokens that carry the edit's meaning, found in this order:

1. the negation lexicon (:data:`NEGATION_CUES`), tokens ending in ``n't``, and contractions
   split across tokens (``isn ' t``, ``doesn 't``), among the edited tokens of either side;
2. otherwise the tokens of the pair's ``target`` word among the edited tokens;
3. otherwise every edited token of the counterfactual (or of the original if it has none).

>>> a = align(["[CLS]", "a", "robin", "is", "a", "bird", ".", "[SEP]"],
...           ["[CLS]", "a", "robin", "isn", "'", "t", "a", "bird", ".", "[SEP]"])
>>> a.replaced, a.cue_side, a.cue
([([3], [3, 4, 5])], 'counterfactual', [3, 4, 5])
>>> len(a.matched)
7
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import numpy as np

NEGATION_CUES = frozenset({"not", "no", "never", "cannot", "nobody", "nothing", "none", "neither",
                           "nor", "nowhere", "without", "n't", "'t"})
_SPECIAL = re.compile(r"^(\[[A-Z]+\]|<[^>]+>|<\|[^|]+\|>)$")


def normalize(token: str) -> str:
    """Token text without subword markers, lower-cased.

    >>> [normalize(t) for t in ["##ing", "Ġnot", "▁Never", "n’t"]]
    ['ing', 'not', 'never', "n't"]
    """
    t = token
    for marker in ("##", "Ġ", "▁"):
        if t.startswith(marker):
            t = t[len(marker):]
    return t.replace("’", "'").lower()


def is_special(token: str, special=None) -> bool:
    """Special tokens ([CLS], <s>, <|endoftext|>, ...) by the tokenizer's list or by shape."""
    if special is not None:
        return token in special
    return bool(_SPECIAL.match(token))


@dataclass
class Alignment:
    """How the tokens of one pair correspond. Indices are token positions of each side."""

    matched: np.ndarray  # [m, 2]: (original index, counterfactual index)
    inserted: list[int] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    replaced: list[tuple[list[int], list[int]]] = field(default_factory=list)
    cue: list[int] = field(default_factory=list)
    cue_side: str | None = None  # "counterfactual", "original" or None
    cue_source: str | None = None  # "lexicon", "target", "edit" or None

    @property
    def matched_original(self) -> np.ndarray:
        return self.matched[:, 0]

    @property
    def matched_counterfactual(self) -> np.ndarray:
        return self.matched[:, 1]

    def describe(self, original: list[str], counterfactual: list[str]) -> dict:
        """A flat, printable summary (for the per-pair CSV)."""
        side = counterfactual if self.cue_side != "original" else original
        return {
            "n_matched": len(self.matched),
            "inserted": " ".join(counterfactual[i] for i in self.inserted),
            "deleted": " ".join(original[i] for i in self.deleted),
            "replaced": " | ".join(" ".join(original[i] for i in o) + " -> "
                                   + " ".join(counterfactual[i] for i in c)
                                   for o, c in self.replaced),
            "cue_tokens": " ".join(side[i] for i in self.cue),
            "cue_side": self.cue_side or "",
            "cue_source": self.cue_source or "",
        }


def _contraction_cues(norm: list[str]) -> set[int]:
    """Positions of n't split over tokens: [..n, ', t] or [..n, 't]."""
    cues = set()
    for i, t in enumerate(norm):
        if t == "'" and 0 < i < len(norm) - 1 and norm[i + 1] == "t" and norm[i - 1].endswith("n"):
            cues.update((i - 1, i, i + 1))
        if t == "'t" and i > 0 and norm[i - 1].endswith("n"):
            cues.update((i - 1, i))
    return cues


def _lexicon_cues(norm: list[str], edited: set[int]) -> list[int]:
    found = {i for i in edited if norm[i] in NEGATION_CUES or norm[i].endswith("n't")}
    found |= _contraction_cues(norm) & edited
    return sorted(found)


def _target_cues(norm: list[str], edited: set[int], target: str | None) -> list[int]:
    if not target:
        return []
    goal = normalize(target).replace(" ", "")
    return sorted(i for i in edited if norm[i] and norm[i] in goal)


def align(original: list[str], counterfactual: list[str], *, target: str | None = None) -> Alignment:
    """Align two token lists (see the module docstring for the rules)."""
    a = [normalize(t) for t in original]
    b = [normalize(t) for t in counterfactual]
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    matched, inserted, deleted, replaced = [], [], [], []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            matched.extend(zip(range(i1, i2), range(j1, j2)))
        elif op == "insert":
            inserted.extend(range(j1, j2))
        elif op == "delete":
            deleted.extend(range(i1, i2))
        else:
            replaced.append((list(range(i1, i2)), list(range(j1, j2))))
    edited_b = set(inserted) | {j for _, js in replaced for j in js}
    edited_a = set(deleted) | {i for is_, _ in replaced for i in is_}
    result = Alignment(np.array(matched, dtype=np.int64).reshape(-1, 2), inserted, deleted, replaced)
    for source, finder in (("lexicon", lambda n, e: _lexicon_cues(n, e)),
                           ("target", lambda n, e: _target_cues(n, e, target)),
                           ("edit", lambda n, e: sorted(e))):
        for side, norm, edited in (("counterfactual", b, edited_b), ("original", a, edited_a)):
            cues = finder(norm, edited)
            if cues:
                result.cue, result.cue_side, result.cue_source = cues, side, source
                return result
    return result
