"""Negation cues of a statement pair, and matched non-negating controls.

Given an ``original`` sentence and its ``counterfactual`` (usually its negation), find the words
that carry the negation (the *cue*, :func:`detect_cue`) and build a *control*
(:func:`build_control`): the same edit with a neutral word in place of the negation, so that a
study can subtract the effect of "inserting any word". :func:`token_char_spans` and
:func:`tokens_in_spans` carry the cue's character spans onto any tokenizer's tokens.

Modules, one job each (an arrow: may import; every module may import the standard library,
and only ``detect`` and ``spans`` import from the rest of probe: its errors and its
special-token rule)::

    words.py     the negation vocabulary and neutral counterparts; words, word diff, affixes
                                                                     (none of these)
    detect.py    Cue and detect_cue: the cue given or found, and its class   -> words
    controls.py  Control and build_control: the matched neutral edit  -> words, detect
    spans.py     token_char_spans and tokens_in_spans                 (none of these)

Everything public is importable from ``probe.cues`` itself.

>>> cue = detect_cue("The cat eats fish.", "The cat does not eat fish.")
>>> cue.text, cue.cls, cue.spans
('not', 'syntactic', ((13, 16),))
>>> build_control("The cat eats fish.", "The cat does not eat fish.", cue).text
'The cat does still eat fish.'
"""

from .controls import Control, build_control
from .detect import Cue, detect_cue
from .spans import token_char_spans, tokens_in_spans

__all__ = ["Control", "Cue", "build_control", "detect_cue", "token_char_spans", "tokens_in_spans"]
