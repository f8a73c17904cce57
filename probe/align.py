"""Token alignment between the two sides of a pair.

Tokens are compared after normalisation (subword markers ``##``, ``Ġ``, ``▁`` removed,
lower-cased, curly apostrophes straightened) with a longest-matching-block diff. Equal tokens
are *matched* and compared position to position; the rest are *inserted* (only in the
counterfactual), *deleted* (only in the original) or *replaced* (a span of one side
replaced by a span of the other). Which edited words are a negation cue is decided on the
texts by :mod:`probe.cues`.

Imports numpy only (and the standard library's difflib).

>>> a = align(["[CLS]", "a", "robin", "is", "a", "bird", ".", "[SEP]"],
...           ["[CLS]", "a", "robin", "isn", "'", "t", "a", "bird", ".", "[SEP]"])
>>> a.replaced
[([3], [3, 4, 5])]
>>> len(a.matched)
7
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import numpy as np

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

    @property
    def matched_original(self) -> np.ndarray:
        return self.matched[:, 0]

    @property
    def matched_counterfactual(self) -> np.ndarray:
        return self.matched[:, 1]


def align(original: list[str], counterfactual: list[str]) -> Alignment:
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
    return Alignment(np.array(matched, dtype=np.int64).reshape(-1, 2), inserted, deleted, replaced)
