"""Negation cue detection, matched controls and token spans (probe.cues): fast, no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probe.cues import Control, Cue, build_control, detect_cue, token_char_spans, tokens_in_spans
from probe.errors import InputError

PAIRS = [json.loads(line) for line in open(Path(__file__).resolve().parents[1] / "data/cue_pairs.jsonl") if line.strip()]
NEGATION = {"syntactic", "affixal", "lexical", "contraction"}


def _cue(o, c):
    cue = detect_cue(o, c)
    return cue.text, cue.cls


# ---- detection -------------------------------------------------------------------------------

@pytest.mark.parametrize("original, counterfactual, expected", [
    ("The robin is a bird.", "The robin is not a bird.", ("not", "syntactic")),
    ("The robin is a bird.", "The robin isn't a bird.", ("isn't", "syntactic")),
    ("She can swim.", "She can’t swim.", ("can’t", "syntactic")),
    ("There is a cat.", "There is no cat.", ("no", "syntactic")),
    ("He always lies.", "He never lies.", ("never", "syntactic")),
    ("All came.", "None came.", ("None", "syntactic")),
    ("Somebody called.", "Nobody called.", ("Nobody", "syntactic")),
    ("I saw something.", "I saw nothing.", ("nothing", "syntactic")),
    ("It went somewhere.", "It went nowhere.", ("nowhere", "syntactic")),
    ("Either works.", "Neither works.", ("Neither", "syntactic")),
    ("Tom and Ann left.", "Neither Tom nor Ann left.", ("Neither nor", "syntactic")),
    ("Tea with sugar.", "Tea without sugar.", ("without", "syntactic")),
    ("She can swim.", "She cannot swim.", ("cannot", "syntactic")),
    ("Someone came.", "No one came.", ("No one", "syntactic")),
    ("He still smokes.", "He no longer smokes.", ("no longer", "syntactic")),
])
def test_syntactic_words(original, counterfactual, expected):
    assert _cue(original, counterfactual) == expected


@pytest.mark.parametrize("original, counterfactual, expected", [
    ("She is happy.", "She is unhappy.", "unhappy"),
    ("It is correct.", "It is incorrect.", "incorrect"),
    ("It is possible.", "It is impossible.", "impossible"),
    ("It is regular.", "It is irregular.", "irregular"),
    ("It is legal.", "It is illegal.", "illegal"),
    ("I like it.", "I dislike it.", "dislike"),
    ("It is toxic.", "It is non-toxic.", "non-toxic"),
    ("It is fiction.", "It is nonfiction.", "nonfiction"),
    ("He was careful.", "He was careless.", "careless"),
    ("We felt happy.", "We felt unhappiness.", "unhappiness"),  # a shared prefix is enough
])
def test_affixal_needs_the_stem_on_the_other_side(original, counterfactual, expected):
    assert _cue(original, counterfactual) == (expected, "affixal")


@pytest.mark.parametrize("original, counterfactual", [
    ("The cat is on the bed.", "The cat is under the bed."),
    ("He found gold.", "He discovered gold."),
    ("She wore a dress.", "She wore a uniform."),
    ("The topic is dull.", "The topic is interesting."),
    ("This is trivial.", "This is important."),
    ("We waited until noon.", "We waited till noon."),  # "til" is not "till"
    ("The results are in.", "The results are unknown."),  # stem not on the other side: missed by design
    ("We go if it rains.", "We go unless it rains."),
    ("He ate more.", "He ate less."),
])
def test_affix_lookalikes_are_not_cues(original, counterfactual):
    assert _cue(original, counterfactual) == ("", None)


@pytest.mark.parametrize("word", ["rarely", "seldom", "hardly", "barely", "scarcely", "fails", "lacks",
                                  "absent", "refused", "denies", "failing", "lacking"])
def test_lexical(word):
    assert _cue("They often x it.", f"They {word} x it.") == (word, "lexical")


@pytest.mark.parametrize("word", ["dont", "didnt", "cant", "wont", "isnt", "arent", "wasnt", "werent",
                                  "doesnt", "couldnt", "shouldnt", "wouldnt", "hasnt", "havent", "hadnt"])
def test_apostrophe_less_contractions(word):
    assert _cue("They go.", f"They {word} go.") == (word, "contraction")


@pytest.mark.parametrize("original, counterfactual", [
    ("He ate only fish.", "He ate nothing but fish."),
    ("She sings and dances.", "She not only sings but also dances."),
    ("He will win.", "He will no doubt win."),
    ("It is clear she left.", "It is no wonder she left."),
    ("He is the chef.", "He is none other than the chef."),
    ("I think so.", "I know so."),
    ("A letter.", "A note."),
    ("Her ear.", "Her nose."),
    ("It was plain.", "It was notable."),
])
def test_near_misses(original, counterfactual):
    assert _cue(original, counterfactual) == ("", None)
    assert detect_cue(original, counterfactual) == Cue("", None, "none", (), ())


def test_spans_and_side():
    c = "The cat does not eat fish."
    cue = detect_cue("The cat eats fish.", c)
    assert cue.source == "detected" and cue.side == "counterfactual" and cue.original_spans == ()
    assert [c[a:b] for a, b in cue.spans] == ["not"]
    cue = detect_cue("He plays piano and violin.", "He plays neither piano nor violin.")
    assert cue.text == "neither nor" and len(cue.spans) == 2


def test_negation_only_in_the_original():
    o = "She doesn't like tea."
    cue = detect_cue(o, "She likes tea.")
    assert (cue.text, cue.cls, cue.side, cue.spans) == ("doesn't", "syntactic", "original", ())
    assert [o[a:b] for a, b in cue.original_spans] == ["doesn't"]
    assert _cue("It is impossible.", "It is possible.") == ("impossible", "affixal")


def test_moved_words():
    o, c = "I think he is not coming.", "I do not think he is coming."
    cue = detect_cue(o, c)
    assert (cue.text, cue.cls, cue.side) == ("not", "syntactic", "both")
    assert [c[a:b] for a, b in cue.spans] == ["not"] and [o[a:b] for a, b in cue.original_spans] == ["not"]
    o, c = "She did not leave yesterday.", "Yesterday she did not leave."
    cue = detect_cue(o, c)
    assert (cue.text, cue.cls, cue.side) == ("Yesterday", "moved", "both")
    assert _cue("Sadly, it did not open.", "It did not open, sadly.") == ("sadly", "moved")  # punctuation is no word


def test_priority_counterfactual_then_original_then_moved():
    # a negation inserted in the counterfactual wins over a moved word
    assert _cue("Today he came.", "He did not come today.") == ("not", "syntactic")
    # the original's negation wins over a moved word
    assert _cue("Today he did not come.", "He came today.") == ("not", "syntactic")
    assert detect_cue("Today he did not come.", "He came today.").side == "original"


def test_identical_and_empty():
    assert detect_cue("Same.", "Same.").source == "none"
    assert detect_cue("", "").source == "none"


# ---- given cues ------------------------------------------------------------------------------

def test_given_text_span_and_original_side():
    o, c = "The dog knows the way.", "The dog does NOT know the way."
    cue = detect_cue(o, c, given="not")
    assert (cue.text, cue.cls, cue.source, cue.spans) == ("NOT", "given", "given", ((13, 16),))
    with pytest.raises(InputError, match="'no'.*does NOT know"):  # "no" is not inside "know"
        detect_cue("The dog sees.", "The dog does NOT know the way.", given="no")
    assert detect_cue(o, c, given=[13, 16]).spans == ((13, 16),)
    assert detect_cue(o, c, given="13:16").text == "NOT"
    removed = detect_cue("It is not here.", "It is here.", given="not")
    assert removed.side == "original" and removed.original_spans == ((6, 9),)


def test_given_errors_name_the_cue_and_sentence():
    with pytest.raises(InputError, match="'never'.*'The cat eats.'"):
        detect_cue("The cat eats.", "The cat eats.", given="never")
    with pytest.raises(InputError, match="outside"):
        detect_cue("a", "a b", given=(2, 9))
    with pytest.raises(InputError, match="outside"):
        detect_cue("a", "a b", given="3:2")
    for bad in (7, [1, 2, 3], ["a", "b"], "", "  "):
        with pytest.raises(InputError):
            detect_cue("a", "a b", given=bad)


# ---- controls --------------------------------------------------------------------------------

def _control(o, c, **kw):
    return build_control(o, c, detect_cue(o, c), **kw)


def test_control_edits_the_counterfactual():
    ctl = _control("The cat eats fish.", "The cat does not eat fish.")
    assert ctl.text.startswith("The cat does ") and ctl.text.endswith(" eat fish.")
    assert ctl.edit in ("really", "also", "still", "surely") and ctl.reason == ""


@pytest.mark.parametrize("cf, aux", [("It isn't red.", "is"), ("It can't fly.", "can"),
                                     ("It won't fly.", "will"), ("It shan't fly.", "shall"),
                                     ("It doesn’t fly.", "does"), ("It dont fly.", "do"),
                                     ("It cant fly.", "can"), ("It wont fly.", "will")])
def test_control_uncontracts(cf, aux):
    ctl = _control(cf.replace(cf.split()[1], "x"), cf)
    assert ctl.edit.split()[0] == aux and ctl.edit.split()[1] in ("really", "also", "still", "surely")


def test_control_avoids_the_original_word_at_that_place():
    for seed in range(20):
        assert _control("She can swim.", "She cannot swim.", seed=seed).edit in ("could", "may", "might")
        assert _control("He often lies.", "He never lies.", seed=seed).edit in ("usually", "sometimes", "always")
        assert _control("There is one cat.", "There is no cat.", seed=seed).edit in ("the", "this", "some")
        assert _control("There are cats.", "There are no cats.", seed=seed).edit in ("many", "some", "several")


@pytest.mark.parametrize("original, counterfactual, edits", [
    ("It was here.", "Nobody was here.", {"Somebody", "Everybody"}),
    ("He saw it.", "He saw nothing.", {"something", "everything"}),
    ("Most left.", "None left.", {"Some", "All"}),
    ("It went home.", "It went nowhere.", {"somewhere", "everywhere"}),
    ("Tom and Ann left.", "Neither Tom nor Ann left.", {"Either or"}),
    ("Tea and sugar.", "Tea without sugar.", {"with"}),
    ("Someone came.", "No one came.", {"Someone", "Everyone"}),
    ("He often eats.", "He rarely eats.", {"usually"}),
    ("I could see.", "I could barely see.", {"really", "nearly"}),
    ("It works.", "It fails.", {"tries", "manages"}),
    ("She won.", "She failed.", {"tried", "managed"}),
    ("It needs salt.", "It lacks salt.", {"has"}),
    ("He was late.", "He was absent.", {"present"}),
    ("He agreed to go.", "He refused to go.", {"chose"}),
    ("I admit it.", "I deny it.", {"confirm"}),
    ("She is happy.", "She is unhappy.", {"really happy", "truly happy"}),
    ("It is possible.", "It is impossible.", {"really possible", "truly possible"}),
    ("I like it.", "I dislike it.", {"really like", "truly like"}),
    ("It is toxic.", "It is non-toxic.", {"really toxic", "truly toxic"}),
    ("He was careful.", "He was careless.", {"very careful"}),
])
def test_control_rules(original, counterfactual, edits):
    ctl = _control(original, counterfactual, key=counterfactual)
    assert ctl.edit in edits, ctl


def test_control_capitalisation_and_determinism():
    o, c = "Often the bus is late.", "Never is the bus late."
    ctl = _control(o, c, key="k")
    assert ctl.text[0].isupper() and ctl.edit in ("Usually", "Sometimes", "Always")
    assert _control(o, c, key="k") == ctl and _control(o, c, seed=0, key="k") == ctl
    edits = {_control("The cat eats.", "The cat does not eat.", key=str(k)).edit for k in range(40)}
    assert edits == {"really", "also", "still", "surely"}  # the key spreads the choice


def test_control_never_reproduces_either_side():
    for r in PAIRS:
        ctl = _control(r["original"], r["counterfactual"], key=r["id"])
        assert ctl.text not in (r["original"], r["counterfactual"])


@pytest.mark.parametrize("original, counterfactual, given, reason", [
    ("A cat.", "A dog.", None, "no cue"),
    ("I think he is not coming.", "I do not think he is coming.", None, "moved word"),
    ("It is not red.", "It is red.", None, "only in the original"),
    ("He is very tall.", "He is tall.", "very", "only in the original"),
    ("A cat sat.", "A dog sat.", "dog", "has no neutral counterpart"),
    ("It has salt.", "It lacks salt.", None, "already a minimal swap"),
])
def test_no_control_reasons(original, counterfactual, given, reason):
    ctl = build_control(original, counterfactual, detect_cue(original, counterfactual, given=given))
    assert ctl.text is None and reason in ctl.reason and ctl.edit == ""


def test_given_negation_word_gets_a_control():
    ctl = build_control("A is B.", "A is not B.", detect_cue("A is B.", "A is not B.", given="not"))
    assert ctl.text is not None and ctl.edit in ("really", "also", "still", "surely")
    assert isinstance(ctl, Control)


# ---- token spans -----------------------------------------------------------------------------

def test_wordpiece_uncased_with_accents_and_split_contraction():
    text = "The Café isn't open."
    tokens = ["[CLS]", "the", "cafe", "isn", "'", "t", "open", ".", "[SEP]", "[PAD]"]
    spans = token_char_spans(text, tokens)
    assert spans[0] is None and spans[-2:] == [None, None]
    assert [text[a:b] for a, b in spans[1:8]] == ["The", "Café", "isn", "'", "t", "open", "."]
    cue = detect_cue("The Café is open.", text)
    assert [tokens[i] for i in tokens_in_spans(spans, cue.spans)] == ["isn", "'", "t"]


def test_wordpiece_continuation():
    text = "It is unbelievable."
    tokens = ["[CLS]", "it", "is", "un", "##bel", "##ie", "##vable", ".", "[SEP]"]
    spans = token_char_spans(text, tokens)
    assert spans[3:7] == [(6, 8), (8, 11), (11, 13), (13, 18)]
    cue = detect_cue("It is believable.", text)
    assert tokens_in_spans(spans, cue.spans) == [3, 4, 5, 6]


def test_byte_level_bpe():
    text = "She doesn't eat crêpes."
    tokens = ["<s>", "She", "Ġdoesn", "'t", "Ġeat", "Ġcr", "Ãª", "pes", ".", "</s>"]
    spans = token_char_spans(text, tokens)
    assert [text[a:b] if s else None for s in spans for a, b in [s or (0, 0)]] == [
        None, "She", "doesn", "'t", "eat", "cr", "ê", "pes", ".", None]
    cue = detect_cue("She eats crêpes.", text)
    assert [tokens[i] for i in tokens_in_spans(spans, cue.spans)] == ["Ġdoesn", "'t"]
    assert token_char_spans("a’b", ["a", "âĢĻ", "b", "<|endoftext|>"]) == [(0, 1), (1, 2), (2, 3), None]


def test_sentencepiece():
    text = "Nobody can’t see it."
    tokens = ["▁Nobody", "▁can", "’", "t", "▁see", "▁it", ".", "</s>", "<pad>"]
    spans = token_char_spans(text, tokens)
    assert [text[a:b] for a, b in spans[:7]] == ["Nobody", "can", "’", "t", "see", "it", "."]
    assert spans[7:] == [None, None]


def test_unlocatable_tokens_get_none_and_never_raise():
    spans = token_char_spans("abc def", ["abc", "xyz", "def", "▁", "", "[UNK]"])
    assert spans == [(0, 3), None, (4, 7), None, None, None]
    assert token_char_spans("", ["a"]) == [None]
    assert tokens_in_spans([None, (0, 3), (4, 7)], [(2, 5)]) == [1, 2]
    assert tokens_in_spans([(0, 3)], []) == []


# ---- the hand-written test set ---------------------------------------------------------------

def test_test_set_covers_every_class():
    by = lambda cls: [r for r in PAIRS if r["cue_class"] == cls]  # noqa: E731
    assert len(PAIRS) >= 150 and len({r["id"] for r in PAIRS}) == len(PAIRS)
    assert len(by("syntactic")) >= 40 and len(by("affixal")) >= 25 and len(by("lexical")) >= 20
    assert len(by("contraction")) >= 15 and len(by("")) >= 20
    scope = [r for r in PAIRS if detect_cue(r["original"], r["counterfactual"]).side == "both"]
    removed = [r for r in PAIRS if detect_cue(r["original"], r["counterfactual"]).side == "original"]
    assert len(scope) >= 8 and len(removed) >= 5


def test_accuracy_on_the_test_set():
    hits = [(_cue(r["original"], r["counterfactual"])) == (r["cue"], r["cue_class"] or None) for r in PAIRS]
    assert sum(hits) / len(hits) >= 0.95
    near = [r["id"] for r, hit in zip(PAIRS, hits) if not r["cue"] and not hit]
    assert near == []  # every near-miss right


def test_controls_carry_no_negation():
    checked = 0
    for r in PAIRS:
        cue = detect_cue(r["original"], r["counterfactual"])
        ctl = build_control(r["original"], r["counterfactual"], cue, key=r["id"])
        if cue.source != "none" and ctl.text is not None:
            again = detect_cue(r["original"], ctl.text)
            assert again.cls not in NEGATION, (r["id"], ctl.text, again)
            checked += 1
    assert checked >= 100
