"""The input rules the README states: line breaks, byte order marks, strict JSON, lone
surrogates, and over-long texts refused before the tokenizer sees them."""

from __future__ import annotations

import pytest

from probe import InputError
from probe.inputs import CHARS_PER_TOKEN_BOUND, encode
from probe.pairs import load_pairs
from probe.readers import iter_records


def _texts(path):
    return [r.text for r in iter_records(path)]


def test_line_breaks_and_bom(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_bytes("\ufeffone\r\ntwo\rthree\nfour\u2028still four\n".encode("utf-8"))
    assert _texts(txt) == ["one", "two", "three", "four\u2028still four"]
    jl = tmp_path / "a.jsonl"
    jl.write_bytes('\ufeff{"text": "x"}\r{"text": "y"}\r\n'.encode("utf-8"))
    assert _texts(jl) == ["x", "y"]
    cs = tmp_path / "a.csv"
    cs.write_bytes('\ufefftext,kind\r\n"a, b",k\r\n"multi\nline",k\r\n'.encode("utf-8"))
    assert _texts(cs) == ["a, b", "multi\nline"]
    pairs = tmp_path / "p.jsonl"
    pairs.write_bytes('\ufeff{"id": "a", "original": "X.", "counterfactual": "Y."}\r'
                      '{"id": "b", "original": "X.", "counterfactual": "Z."}'.encode("utf-8"))
    assert [p.id for p in load_pairs(pairs)] == ["a", "b"]
    # a number on a later line is right after \r-only line breaks
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"one\rtwo\r\xff\n")
    with pytest.raises(InputError, match=r"b\.txt:1: not valid UTF-8"):
        _texts(bad)


@pytest.mark.parametrize("line,message", [
    ('{"text": "x", "score": NaN}', "NaN is not JSON"),
    ('{"text": "x", "score": Infinity}', "Infinity is not JSON"),
    ('{"text": "a \\ud800 b"}', "field 'text' holds a lone surrogate"),
    ('{"text": "x", "meta": {"k": ["\\udfff"]}}', "field 'k' holds a lone surrogate"),
])
def test_strict_json(tmp_path, line, message):
    path = tmp_path / "x.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(InputError, match=message):
        _texts(path)
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(line.replace('{"text": ', '{"id": "a", "original": "o", "counterfactual": ') + "\n")
    with pytest.raises(InputError, match=message.split(" holds")[0].replace("'text'", "'counterfactual'")):
        load_pairs(pairs)


class CountingTokenizer:
    """Splits on spaces and counts the characters it was given."""

    all_special_ids = [1]

    def __init__(self):
        self.seen = 0

    def __call__(self, texts, **_):
        self.seen += sum(len(t) for t in texts)
        return {"input_ids": [[0] + [2] * len(t.split()) + [1] for t in texts]}


def test_over_long_texts_are_refused_before_tokenising():
    tok = CountingTokenizer()
    huge = "x" * (10 * CHARS_PER_TOKEN_BOUND + 1)
    with pytest.raises(InputError, match=r"example #1 is 321 characters long; no text over 320"):
        encode(tok, ["fine", huge], max_length=10)
    assert tok.seen == 0
    out = encode(tok, ["fine", huge], max_length=10, truncate=True)
    assert tok.seen == 4 + 320 and out.truncated == [False, True]
    with pytest.raises(InputError, match="more than the model's maximum of 10"):
        encode(tok, ["a " * 20], max_length=10)


def test_model_load_errors_are_one_line_and_name_a_missing_folder(monkeypatch, tmp_path):
    import transformers

    from probe.models import load_model

    with pytest.raises(InputError, match=f"model folder {tmp_path / 'gone'} does not exist"):
        load_model(str(tmp_path / "gone"))

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection.")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(InputError) as err:
        load_model("org/model")
    message = str(err.value)
    assert "\n" not in message and "'org/model' (name)" in message
    assert "huggingface.co'. Check your connection. Give a local folder" in message


def test_layer_and_head_indices_are_whole_numbers():
    """1.5 was silently captured as layer 1, True as layer 1, and numpy's int64 raised a raw
    TypeError."""
    import numpy as np

    from conftest import _tiny
    from probe import AttentionProbe
    from probe.selection import parse_heads

    model = _tiny("bert")  # 2 layers, 4 heads
    for layers in ([1.5], [True], 0.0, ["1,"]):
        with pytest.raises(InputError, match="is not a layer index"):
            AttentionProbe(model, layers=layers)
    assert AttentionProbe(model, layers=np.int64(1), keys=["z"]).exposed_keys == ["blocks.1.attn.z"]
    assert AttentionProbe(model, layers=[np.int64(-2), "1"], keys=["z"]).exposed_keys == [
        "blocks.0.attn.z", "blocks.1.attn.z"]
    for heads in ({1.5: [0]}, {True: [0]}, {0: [1.0]}, {0: [-1]}):
        with pytest.raises(InputError, match="does not exist|is not a head index"):
            parse_heads(heads, n_layers=2, n_heads=4)
    assert parse_heads({np.int64(1): [np.int64(3)]}, n_layers=2, n_heads=4) == {1: (3,)}


def test_compare_follows_the_pair_file_rules():
    """notebook.compare() of two identical sentences ran and reported differences of zero;
    it now refuses what a pair file refuses, before loading a model."""
    from probe.notebook import compare

    for args, message in ((("A cat.", " A cat. "), "identical original and counterfactual"),
                          (("", "A cat."), "has an empty original"),
                          (("A cat.", None), "counterfactual must be a string")):
        with pytest.raises(InputError, match=f"compare\\(\\): .*{message}"):
            compare(*args, model=object())
    with pytest.raises(InputError, match="the control must differ"):
        compare("A cat.", "No cat.", control="A cat.", model=object())


def test_capture_and_run_access_errors_are_probe_errors(tmp_path):
    """A missing key, an example number past the end and a non-number index raise probe's
    errors, which stay KeyError / IndexError for Python's own protocols."""
    import numpy as np

    from probe import ProbeError
    from probe.captures import Capture, CapturedBatch
    from probe.errors import MissingKeyError, OutOfRangeError

    batch = CapturedBatch({"blocks.0.attn.pattern": np.ones((2, 1, 3, 3)) / 3}, [(0, 3), (0, 2)],
                          [list("abc"), list("ab")])
    cap = Capture([batch.example(0), batch.example(1)], batch.keys)
    with pytest.raises(MissingKeyError, match="'blocks.0.attn.q' was not captured") as err:
        cap[0]["blocks.0.attn.q"]
    assert isinstance(err.value, KeyError) and isinstance(err.value, ProbeError)
    assert not str(err.value).startswith('"')  # not KeyError's quoted form
    assert cap[0].get("blocks.0.attn.q", "none") == "none" and "blocks.0.attn.q" not in cap[0]
    with pytest.raises(OutOfRangeError, match="example 2 out of range: there are 2 examples"):
        cap[2]
    assert isinstance(OutOfRangeError("x"), IndexError)
    assert cap[np.int64(-1)].tokens == ["a", "b"] and [len(ex.tokens) for ex in cap] == [3, 2]
    with pytest.raises(InputError, match="not indexed by str 'x'"):
        cap["x"]
