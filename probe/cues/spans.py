"""Character spans of tokens: where each token of any tokenizer (WordPiece, byte-level BPE,
SentencePiece; cased or not) lies in the text, so that a cue's character spans become token
indices.

One job: :func:`token_char_spans` and :func:`tokens_in_spans`. Imports the standard library
and ``probe.align`` (its special-token rule).
"""

from __future__ import annotations

import codecs
import unicodedata

from ..align import is_special


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
