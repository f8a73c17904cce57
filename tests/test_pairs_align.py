"""Pair files and token alignment, on hand-checked cases."""

from __future__ import annotations

import pytest

from probe import InputError
from probe.align import align
from probe.pairs import load_pairs


def _bert(tokenizer, text):
    return ["[CLS]", *tokenizer.tokenize(text), "[SEP]"]


# (original, counterfactual, replaced/inserted/deleted summary, cue tokens, cue side)
BERT_CASES = [
    ("A robin is a bird.", "A robin is not a bird.", {"inserted": "not"}, "not", "counterfactual"),
    ("The robin is a bird.", "The robin isn't a bird.", {"replaced": "is -> isn ' t"}, "isn ' t", "counterfactual"),
    ("She can swim.", "She cannot swim.", {"replaced": "can -> cannot"}, "cannot", "counterfactual"),
    ("She can swim.", "She can't swim.", {"inserted": "' t"}, "' t", "counterfactual"),
    ("The cat eats fish.", "The cat doesn't eat fish.", {"replaced": "eats -> doesn ' t eat"}, "doesn ' t", "counterfactual"),
    ("The cat eats fish.", "The cat does not eat fish.", {"replaced": "eats -> does not eat"}, "not", "counterfactual"),
    ("There is a bird here.", "There is no bird here.", {"replaced": "a -> no"}, "no", "counterfactual"),
    ("He always lies.", "He never lies.", {"replaced": "always -> never"}, "never", "counterfactual"),
    ("They were ready.", "They weren't ready.", {"replaced": "were -> weren ' t"}, "weren ' t", "counterfactual"),
    ("She decided to go.", "She decided not to go.", {"inserted": "not"}, "not", "counterfactual"),
    ("The robin is not a bird.", "The robin is a bird.", {"deleted": "not"}, "not", "original"),
    ("The unbelievable story is true.", "The unbelievable story is not true.", {"inserted": "not"}, "not", "counterfactual"),
    # word swaps, one subword into several
    ("The cat sat here.", "The hippopotamus sat here.", {"replaced": "cat -> hip ##pop ##ota ##mus"},
     "hip ##pop ##ota ##mus", "counterfactual"),
    ("We found three pebbles.", "We found four pebbles.", {"replaced": "three -> four"}, "four", "counterfactual"),
]


@pytest.mark.parametrize("original,counterfactual,edit,cue,side", BERT_CASES)
def test_bert_alignment(tokenizer, original, counterfactual, edit, cue, side):
    a, b = _bert(tokenizer, original), _bert(tokenizer, counterfactual)
    al = align(a, b)
    d = al.describe(a, b)
    for k, v in edit.items():
        assert d[k] == v, (k, d)
    assert d["cue_tokens"] == cue and d["cue_side"] == side
    # matched tokens are equal after normalisation, and cover everything not edited
    for i, j in al.matched:
        assert a[i].lower() == b[j].lower()
    n_edit_a = len(al.deleted) + sum(len(o) for o, _ in al.replaced)
    n_edit_b = len(al.inserted) + sum(len(c) for _, c in al.replaced)
    assert len(al.matched) + n_edit_a == len(a) and len(al.matched) + n_edit_b == len(b)
    assert al.matched[0].tolist() == [0, 0] and al.matched[-1].tolist() == [len(a) - 1, len(b) - 1]


def test_bpe_and_sentencepiece_tokens():
    gpt2 = align(["The", "Ġcat", "Ġeats", "."], ["The", "Ġcat", "Ġdoesn", "'t", "Ġeat", "."])
    assert [t for t in gpt2.cue] == [2, 3] and gpt2.cue_source == "lexicon"
    roberta = align(["<s>", "He", "Ġis", "Ġhere", "</s>"], ["<s>", "He", "Ġis", "Ġnot", "Ġhere", "</s>"])
    assert roberta.inserted == [3] and roberta.cue == [3]
    llama = align(["<s>", "▁She", "▁can", "▁swim"], ["<s>", "▁She", "▁can", "'", "t", "▁swim"])
    assert llama.cue == [3, 4]
    curly = align(["▁It", "▁is"], ["▁It", "▁isn", "’", "t"])
    assert curly.cue == [1, 2, 3]


def test_target_guides_non_negation_edits():
    al = align(["[CLS]", "the", "cat", "sat", "on", "the", "mat", "[SEP]"],
               ["[CLS]", "the", "dog", "sat", "on", "a", "mat", "[SEP]"], target="dog")
    assert al.cue == [2] and al.cue_source == "target"
    assert al.replaced == [([2], [2]), ([5], [5])]


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_pair_file_validation(tmp_path):
    good = _write(tmp_path, "ok.jsonl",
                  '{"id": "a", "original": "X is.", "counterfactual": "X is not.", "kind": "copula", "domain": "d"}\n'
                  '\n{"id": "b", "original": "Y can.", "counterfactual": "Y cannot.", "group": 3}\n')
    pairs = load_pairs(good)
    assert [p.id for p in pairs] == ["a", "b"] and pairs[0].meta == {"domain": "d"}
    assert pairs[1].group == "3" and pairs[1].line == 3
    cases = [
        ('{"id": "a", "original": "X."}\n', r"bad\.jsonl:1: missing field counterfactual"),
        ('{"original": "X.", "counterfactual": "Y."}\n', r"bad\.jsonl:1: missing field id"),
        ('{"id": "a", "original": "X.", "counterfactual": "X."}\n', r":1: pair 'a' has identical"),
        ('{"id": "a", "original": "  ", "counterfactual": "X."}\n', r":1: pair 'a' has an empty original"),
        ('{"id": "a", "original": "X.", "counterfactual": "Y."}\n{"id": "a", "original": "Z.", '
         '"counterfactual": "W."}\n', r":2: duplicate id 'a' \(first on line 1\)"),
        ('{"id": "a", "original": "X.", "counterfactual": "Y."}\n{"id": \n', r":2: malformed JSON"),
        ("", "holds no pairs"),
    ]
    for text, message in cases:
        with pytest.raises(InputError, match=message):
            load_pairs(_write(tmp_path, "bad.jsonl", text))
    csv_ok = _write(tmp_path, "p.csv", 'id,original,counterfactual,kind\n1,"A, b.","A, not b.",copula\n')
    assert load_pairs(csv_ok)[0].original == "A, b."
    with pytest.raises(InputError, match=r"p2\.csv:1: CSV header lacks counterfactual"):
        load_pairs(_write(tmp_path, "p2.csv", "id,original\n1,x\n"))
    with pytest.raises(InputError, match="does not exist"):
        load_pairs(tmp_path / "missing.jsonl")


def test_bundled_pair_sets_are_valid_and_varied():
    from collections import Counter
    from pathlib import Path

    data = Path(__file__).resolve().parent.parent / "data"
    neg = load_pairs(data / "negation_pairs.jsonl")
    contrast = load_pairs(data / "contrast_pairs.jsonl")
    assert len(neg) >= 500
    kinds = Counter(p.kind for p in neg)
    assert {"copula", "contraction", "modal", "never", "no", "do-support", "not-adjective",
            "not-verb", "auxiliary"} <= set(kinds)
    assert len({p.meta["domain"] for p in neg}) >= 6
    ids = {p.id for p in neg}
    originals = {p.id: p.original for p in neg}
    assert all(c.group in ids and originals[c.group] == c.original for c in contrast)
