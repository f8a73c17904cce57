"""Negation cues of a statement pair, and matched non-negating controls.

One job: given an ``original`` sentence and its ``counterfactual`` (usually its negation), find
the words that carry the negation (the *cue*, :func:`detect_cue`) and build a *control*
(:func:`build_control`): the same edit with a neutral word in place of the negation, so that a
study can subtract the effect of "inserting any word". :func:`token_char_spans` and
:func:`tokens_in_spans` carry the cue's character spans onto any tokenizer's tokens.
Imports the standard library and probe's errors and special-token rule.

Cues are found on a word-level diff (``difflib``, lower-cased words) and classed as
``syntactic`` (not, n't, no, never, ...), ``affixal`` (un-, in-, im-, ir-, il-, dis-, non-,
-less: only when the stem stands on the other side), ``lexical`` (rarely, fail, lack, deny,
...), ``contraction`` (apostrophe-less: dont, isnt, ...) or ``moved`` (a word deleted in one
place and inserted in another). Not cues, by decision: "nothing but", "no doubt", "no wonder",
"none other", "not only ... but", and "unless" (a connective that replaces "if"; it has no
neutral counterpart at the same place).

>>> cue = detect_cue("The cat eats fish.", "The cat does not eat fish.")
>>> cue.text, cue.cls, cue.spans
('not', 'syntactic', ((13, 16),))
>>> build_control("The cat eats fish.", "The cat does not eat fish.", cue).text
'The cat does still eat fish.'
"""

from __future__ import annotations

import codecs
import difflib
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import NamedTuple

from .align import is_special
from .errors import InputError

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
_SPAN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


class _Word(NamedTuple):
    text: str
    low: str
    start: int
    stop: int


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


@dataclass(frozen=True)
class Control:
    """A matched control sentence, or ``text=None`` and the reason none could be built."""

    text: str | None
    reason: str
    edit: str


def _words(text: str) -> list[_Word]:
    return [_Word(m.group(), m.group().lower().replace("’", "'"), m.start(), m.end())
            for m in _WORD.finditer(text)]


def _diff(original: str, counterfactual: str):
    """Words of both sides, differing word indices of each, and the original words each
    differing counterfactual word replaces."""
    ow, cw = _words(original), _words(counterfactual)
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


def _affix(w: str, other) -> tuple[str, str] | None:
    """(affix, what it negates) when `w` is an affixed word whose stem stands in `other`."""
    for p in PREFIXES:
        if w.startswith(p) and len(w) - len(p) >= 3 and any(_stem_match(w[len(p):], o) for o in other):
            return p, w[len(p):]
    if w.endswith("less") and len(w) >= 7:  # the root stands as a prefix: care-less ~ care-ful
        match = [o for o in other if o.startswith(w[:-4]) and not o.endswith("less")]
        if match:
            return "less", match[0]
    return None


def _classify(words: list[_Word], k: int, other, other_all) -> tuple[str, int] | None:
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
    return ("affixal", k) if _affix(w, other) else None


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
    ow, cw, o_diff, c_diff, _ = _diff(original, counterfactual)
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


def _neutral(text: str, nxt: str, other_words: list[_Word]) -> tuple[str, ...]:
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
    hit = _affix(w, [o.low for o in other_words])
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
    ow, cw, o_diff, _, place = _diff(original, counterfactual)
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


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: printable character -> byte."""
    bs = [*range(33, 127), *range(161, 173), *range(174, 256)]
    cs, extra = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTES = _byte_decoder()


def _normalize(text: str) -> tuple[str, list[int]]:
    """NFKD, accents stripped, lower-cased, curly apostrophes straightened; index map to `text`."""
    out, index = [], []
    for i, ch in enumerate(text):
        for c in unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", ch).lower()):
            if not unicodedata.combining(c):
                out.append("'" if c in "’‘" else c)
                index.append(i)
    return "".join(out), index


def token_char_spans(text: str, tokens: list[str]) -> list[tuple[int, int] | None]:
    """Character span [start, stop) of each token in `text`; None for special or lost tokens.

    Handles WordPiece (``##``), byte-level BPE (``Ġ``) and SentencePiece (``▁``) tokens, cased
    or uncased (accents stripped). Matching is greedy, left to right; it never raises.

    >>> token_char_spans("Isn't it", ["[CLS]", "isn", "'", "t", "it", "[SEP]"])
    [None, (0, 3), (3, 4), (4, 5), (6, 8), None]
    >>> token_char_spans("He doesn't", ["He", "Ġdoesn", "'t"])
    [(0, 2), (3, 8), (8, 10)]
    """
    norm, index = _normalize(text)
    byte_level = any(t.startswith("Ġ") for t in tokens)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
    spans, cursor, pending = [None] * len(tokens), 0, []  # pending: tokens ending in part of a character
    for i, token in enumerate(tokens):
        if is_special(token):
            continue
        pieces = [token]
        if all(c in _BYTES for c in token):  # byte-level BPE: decode it (only as a fallback if unsure)
            raw = bytes(_BYTES[c] for c in token)
            pieces = [decoder.decode(raw)] if byte_level else [token, raw.decode("utf-8", errors="ignore")]
        for piece in pieces:
            piece = piece.replace("▁", " ")
            piece = _normalize(piece[2:] if piece.startswith("##") and len(piece) > 2 else piece)[0].strip()
            at = norm.find(piece, cursor) if piece else -1
            if at >= 0:
                spans[i], cursor = (index[at], index[at + len(piece) - 1] + 1), at + len(piece)
                for p in pending:  # the character they began ends here
                    spans[p] = ((spans[p] or spans[i])[0], index[at] + 1)
                pending = []
                break
        if byte_level and decoder.getstate()[0]:
            pending.append(i)
    return spans


def tokens_in_spans(token_spans, spans) -> list[int]:
    """Indices of the tokens whose character span overlaps any of `spans`.

    >>> tokens_in_spans([None, (0, 3), (3, 4), (4, 5), (6, 8)], [(0, 5)])
    [1, 2, 3]
    """
    return [i for i, ts in enumerate(token_spans)
            if ts is not None and any(ts[0] < b and a < ts[1] for a, b in spans)]
