"""Pair files and token alignment, on hand-checked cases."""

from __future__ import annotations

import pytest

from probe import InputError
from probe.align import align
from probe.cues import detect_cue, token_char_spans, tokens_in_spans
from probe.pairs import load_pairs


def _bert(tokenizer, text):
    return ["[CLS]", *tokenizer.tokenize(text), "[SEP]"]


# (original, counterfactual, edit summary, cue tokens, cue side)
BERT_CASES = [
    ("A robin is a bird.", "A robin is not a bird.", {"inserted": "not"}, "not", "counterfactual"),
    ("The robin is a bird.", "The robin isn't a bird.", {"replaced": "is -> isn ' t"}, "isn ' t", "counterfactual"),
    ("She can swim.", "She cannot swim.", {"replaced": "can -> cannot"}, "cannot", "counterfactual"),
    ("She can swim.", "She can't swim.", {"inserted": "' t"}, "can ' t", "counterfactual"),
    ("The cat eats fish.", "The cat doesn't eat fish.", {"replaced": "eats -> doesn ' t eat"}, "doesn ' t", "counterfactual"),
    ("The cat eats fish.", "The cat does not eat fish.", {"replaced": "eats -> does not eat"}, "not", "counterfactual"),
    ("There is a bird here.", "There is no bird here.", {"replaced": "a -> no"}, "no", "counterfactual"),
    ("He always lies.", "He never lies.", {"replaced": "always -> never"}, "never", "counterfactual"),
    ("They were ready.", "They weren't ready.", {"replaced": "were -> weren ' t"}, "weren ' t", "counterfactual"),
    ("She decided to go.", "She decided not to go.", {"inserted": "not"}, "not", "counterfactual"),
    ("The robin is not a bird.", "The robin is a bird.", {"deleted": "not"}, "not", "original"),
    ("The unbelievable story is true.", "The unbelievable story is not true.", {"inserted": "not"}, "not", "counterfactual"),
    ("The task is possible.", "The task is impossible.", {"replaced": "possible -> impossible"}, "impossible", "counterfactual"),
    # word swaps, one subword into several: no negation cue
    ("The cat sat here.", "The hippopotamus sat here.", {"replaced": "cat -> hip ##pop ##ota ##mus"}, "", None),
    ("We found three pebbles.", "We found four pebbles.", {"replaced": "three -> four"}, "", None),
]


def _describe(al, a, b):
    return {"inserted": " ".join(b[i] for i in al.inserted),
            "deleted": " ".join(a[i] for i in al.deleted),
            "replaced": " | ".join(" ".join(a[i] for i in o) + " -> " + " ".join(b[i] for i in c)
                                   for o, c in al.replaced)}


@pytest.mark.parametrize("original,counterfactual,edit,cue,side", BERT_CASES)
def test_bert_alignment_and_cue_tokens(tokenizer, original, counterfactual, edit, cue, side):
    a, b = _bert(tokenizer, original), _bert(tokenizer, counterfactual)
    al = align(a, b)
    d = _describe(al, a, b)
    for k, v in edit.items():
        assert d[k] == v, (k, d)
    # matched tokens are equal after normalisation, and cover everything not edited
    for i, j in al.matched:
        assert a[i].lower() == b[j].lower()
    n_edit_a = len(al.deleted) + sum(len(o) for o, _ in al.replaced)
    n_edit_b = len(al.inserted) + sum(len(c) for _, c in al.replaced)
    assert len(al.matched) + n_edit_a == len(a) and len(al.matched) + n_edit_b == len(b)
    assert al.matched[0].tolist() == [0, 0] and al.matched[-1].tolist() == [len(a) - 1, len(b) - 1]
    # the cue found on the text maps onto exactly these tokens of its side
    found = detect_cue(original, counterfactual)
    assert found.side == side
    text, tokens, spans = ((counterfactual, b, found.spans) if side == "counterfactual"
                           else (original, a, found.original_spans))
    positions = tokens_in_spans(token_char_spans(text, tokens), spans)
    assert " ".join(tokens[i] for i in positions) == cue


def test_cue_tokens_for_bpe_and_sentencepiece():
    def cue_tokens(text, tokens):
        found = detect_cue(text.replace("doesn't eat", "eats").replace("can't", "can")
                           .replace("isn’t", "is").replace(" not", ""), text)
        return [tokens[i] for i in tokens_in_spans(token_char_spans(text, tokens), found.spans)]

    assert cue_tokens("The cat doesn't eat.", ["The", "Ġcat", "Ġdoesn", "'t", "Ġeat", "."]) == ["Ġdoesn", "'t"]
    assert cue_tokens("He is not here", ["<s>", "He", "Ġis", "Ġnot", "Ġhere", "</s>"]) == ["Ġnot"]
    assert cue_tokens("She can't swim", ["<s>", "▁She", "▁can", "'", "t", "▁swim"]) == ["▁can", "'", "t"]
    assert cue_tokens("It isn’t", ["▁It", "▁isn", "’", "t"]) == ["▁isn", "’", "t"]


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


def test_bundled_pairs_have_controls_clusters_and_no_duplicates():
    from collections import Counter
    from pathlib import Path

    from probe.pairs import duplicates

    data = Path(__file__).resolve().parents[2] / "data"
    neg = load_pairs(data / "negation_pairs.jsonl")
    assert len(neg) >= 400
    kinds = Counter(p.kind for p in neg)
    assert {"copula", "contraction", "modal", "never", "no", "do-support", "not-adjective",
            "not-verb", "auxiliary"} <= set(kinds)
    assert len({p.meta["domain"] for p in neg}) >= 6
    assert all(p.control and p.cluster for p in neg)
    assert not duplicates(neg)
    cluster_of = {}
    for p in neg:  # pairs that share an original share a cluster
        assert cluster_of.setdefault(p.original, p.cluster) == p.cluster
    # every control is non-negating, and every counterfactual carries a detected cue
    assert all(detect_cue(p.original, p.control).source == "none" for p in neg)
    assert all(detect_cue(p.original, p.counterfactual).source == "detected" for p in neg)


def test_control_cue_and_cluster_fields(tmp_path):
    from probe.pairs import assign_clusters, duplicates, slugs

    rows = [
        '{"id": "a", "original": "X is.", "counterfactual": "X is not.", "control": "X is also.", "cue": "not"}',
        '{"id": "b", "original": "X is.", "counterfactual": "X isnt.", "cue": [2, 6], "cluster": "t1"}',
        '{"id": "c", "original": "Y is.", "counterfactual": "X is not."}',
        '{"id": "d", "original": "Z is.", "counterfactual": "Z is never."}',
        '{"id": "e", "original": "X is.", "counterfactual": "X is not."}',
    ]
    pairs = load_pairs(_write(tmp_path, "p.jsonl", "\n".join(rows) + "\n"))
    assert pairs[0].control == "X is also." and pairs[0].cue == "not" and pairs[1].cue == [2, 6]
    # a and c share a counterfactual, a and e an original; b has its own cluster field
    assert assign_clusters(pairs) == ["a", "t1", "a", "d", "a"]
    assert duplicates(pairs) == {4: "a"}
    csv_path = _write(tmp_path, "p.csv", "id,original,counterfactual,cue\n1,X is.,X is not.,5:8\n")
    assert load_pairs(csv_path)[0].cue == [5, 8]
    bad = [('{"id": "a", "original": "X.", "counterfactual": "Y.", "control": "X."}',
            r":1: pair 'a': the control must differ"),
           ('{"id": "a", "original": "X.", "counterfactual": "Y.", "cue": [1]}', r":1: cue must be a text"),
           ('{"id": "a", "original": "X.", "counterfactual": "Y.", "control": 3}', r"control must be a non-empty"),
           ]
    for text, message in bad:
        with pytest.raises(InputError, match=message):
            load_pairs(_write(tmp_path, "bad.jsonl", text + "\n"))
    ids = ["a/b", "a-b", "..", "", "x" * 200, "A/B"]
    out = slugs(ids)
    assert len({s.lower() for s in out}) == len(ids)
    assert all(s and "/" not in s and not s.startswith(".") and len(s) <= 60 for s in out)
    assert out[1] == "a-b" and out[0].startswith("a-b-")


def test_a_given_cue_missing_from_the_text_names_the_pair(tmp_path):
    from probe.design import plan_pairs

    pairs = load_pairs(_write(tmp_path, "p.jsonl", '{"id": "q/1", "original": "X is.", '
                              '"counterfactual": "X is not.", "cue": "never"}\n'))
    with pytest.raises(InputError, match=r"pair 'q/1' \(line 1\): cue 'never' is in neither"):
        plan_pairs(pairs)
