"""HDF5 run files: round trip, h5py-only reading, refusals, bad input, schema versions."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import SENTENCES
from probe import AttentionProbe, InputError, SchemaError, open_run
from probe.errors import MissingKeyError, OutOfRangeError
from probe.runner import capture_to_file
from probe.readers import iter_records


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def live_and_stored(minilm, tmp_path_factory):
    model, tokenizer = minilm
    path = tmp_path_factory.mktemp("run") / "run.h5"
    meta = [{"id": f"s{i}", "domain": "test"} for i in range(len(SENTENCES))]
    with AttentionProbe(model, tokenizer) as p:
        live = p.run(SENTENCES, batch_size=2, meta=meta)
        stored = p.run_to_file(SENTENCES, path, batch_size=2, meta=meta)
    return live, stored, path


def test_stored_float32_equals_live_capture(live_and_stored):
    live, stored, _ = live_and_stored
    assert len(stored) == len(live) == len(SENTENCES)
    assert stored.keys == live.keys and stored.complete
    for a, b in zip(live, stored):
        assert (a.tokens, a.text, a.index) == (b.tokens, b.text, b.index)
        assert b.meta == {"id": f"s{a.index}", "domain": "test"}
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_float16_and_compression_round_trip(minilm, tmp_path):
    model, tokenizer = minilm
    with AttentionProbe(model, tokenizer, layers=[1], keys=["pattern", "q"]) as p:
        live = p.run(SENTENCES[:3])
        for compression in ("lzf", "gzip-4"):
            run = p.run_to_file(SENTENCES[:3], tmp_path / f"{compression}.h5", dtype="float16",
                        compression=compression)
            with run:
                assert run.attrs["dtype"] == "float16" and run.attrs["compression"] == compression
                for a, b in zip(live, run):
                    assert b["blocks.1.attn.pattern"].dtype == np.float32
                    np.testing.assert_allclose(b["blocks.1.attn.pattern"], a["blocks.1.attn.pattern"],
                                               atol=5e-4)
                    np.testing.assert_allclose(b["blocks.1.attn.q"], a["blocks.1.attn.q"], rtol=1e-3,
                                               atol=1e-3)


def test_readable_with_h5py_alone_by_the_documented_recipe(live_and_stored):
    """Follows README's 'Reading a run with h5py alone' step by step."""
    live, _, path = live_and_stored
    with h5py.File(path, "r") as f:
        n_done = int(f["state/n_done"][0])
        rows = {int(f["index/example"][r]): r for r in range(n_done)}
        for ex in live:
            row = rows[ex.index]
            t0, n = int(f["index/token_start"][row]), int(f["index/n_tokens"][row])
            ends = f["tokens/end"][max(t0 - 1, 0): t0 + n]
            ends = np.concatenate([[0], ends]) if t0 == 0 else ends
            raw = f["tokens/text"][ends[0]:ends[-1]].tobytes()
            tokens = [raw[a - ends[0]:b - ends[0]].decode() for a, b in zip(ends[:-1], ends[1:])]
            assert tokens == ex.tokens
            a, m = int(f["index/text_start"][row]), int(f["index/text_len"][row])
            assert f["examples/text"][a:a + m].tobytes().decode() == ex.text
            for key in ("blocks.3.attn.pattern", "blocks.0.attn.k", "blocks.5.attn.value_norm"):
                ds = f[f"blocks/{key.split('.')[1]}/attn/{key.split('.')[3]}"]
                per_unit = int(ds.attrs["per_unit"])
                start = int(f[f"index/{ds.attrs['unit']}_start"][row]) * per_unit
                units = n if ds.attrs["unit"] == "token" else n * n
                x = ds[start:start + units * per_unit].reshape([s or n for s in ds.attrs["sizes"]])
                np.testing.assert_array_equal(x, ex[key])
            vw = (f["blocks/2/attn/pattern"], f["blocks/2/attn/value_norm"])
            assert list(vw[0].attrs["axes"]) == ["head", "query", "key"]
        assert f.attrs["schema"] == "probe.run" and f.attrs["schema_version"] == 2
        for name in ("model", "model_fingerprint", "tokenizer", "transformers_version",
                     "torch_version", "probe_version", "attn_implementation", "dtype", "created"):
            assert f.attrs[name] != "", name
        assert "h5py alone" in f.attrs["readme"]


def test_lazy_selection_and_value_weighted_derived_on_load(live_and_stored):
    live, _, path = live_and_stored
    with open_run(path, layers=[4], components=["value_weighted"]) as run:
        assert run.keys == ("blocks.4.attn.value_weighted",)
        ex = run[2]
        np.testing.assert_array_equal(ex["blocks.4.attn.value_weighted"],
                                      live[2]["blocks.4.attn.value_weighted"])
        view = run.select(layers=[4])
        assert len(view) == len(SENTENCES) and view[0].tokens == live[0].tokens
        assert [e.index for e in run] == list(range(len(SENTENCES)))
        assert run.metas() == [e.meta for e in run] == [{"id": f"s{i}", "domain": "test"}
                                                          for i in range(len(SENTENCES))]
        with pytest.raises(OutOfRangeError, match=f"there are {len(SENTENCES)} examples"):
            run[len(SENTENCES)]
        with pytest.raises(MissingKeyError, match="not captured"):
            run[0]["blocks.4.attn.pattern"]


def test_existing_output_is_never_overwritten(minilm, live_and_stored):
    model, tokenizer = minilm
    _, _, path = live_and_stored
    before = sha(path)
    with AttentionProbe(model, tokenizer) as p:
        with pytest.raises(InputError, match="already exists"):
            p.run_to_file(SENTENCES, path)
    assert sha(path) == before


def test_resume_with_other_settings_is_refused(minilm, live_and_stored):
    model, tokenizer = minilm
    _, _, path = live_and_stored
    before = sha(path)
    with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
        with pytest.raises(InputError, match=r"settings differ.*keys.*dtype: file has 'float32', "
                                             r"this run has 'float16'"):
            p.run_to_file(SENTENCES, path, batch_size=2, resume=True, dtype="float16")
    with AttentionProbe(model, tokenizer) as p:
        with pytest.raises(InputError, match="input_sha256"):
            p.run_to_file(SENTENCES[::-1], path, batch_size=2, resume=True)
    from conftest import _tiny

    with AttentionProbe(_tiny("bert"), tokenizer) as p:
        with pytest.raises(InputError, match="model_fingerprint"):
            p.run_to_file(SENTENCES, path, batch_size=2, resume=True)
    assert sha(path) == before


def test_other_schema_version_and_non_run_files(live_and_stored, tmp_path):
    _, _, path = live_and_stored
    old = tmp_path / "old.h5"
    old.write_bytes(open(path, "rb").read())
    with h5py.File(old, "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(SchemaError, match="schema version 99"):
        open_run(old)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = [1]
    with pytest.raises(SchemaError, match="not a probe run"):
        open_run(other)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(SchemaError, match="not a readable HDF5") as err:
        open_run(text)
    assert "\n" not in str(err.value)  # HDF5's own message spans lines
    with pytest.raises(InputError, match="does not exist"):
        open_run(tmp_path / "missing.h5")
    with pytest.raises(InputError, match="is a folder; give a run file"):
        open_run(tmp_path)


@pytest.mark.parametrize("content,suffix,message", [
    ("A fine line.\n\nAnother.\n", ".txt", r"in\.txt:2: empty text"),
    ('{"text": "ok"}\n{"text": "broken"\n', ".jsonl", r"in\.jsonl:2: malformed JSON"),
    ('{"text": "ok"}\n{"id": 3}\n', ".jsonl", r"in\.jsonl:2: missing field 'text'"),
    ("id,sentence\n1,hello\n", ".csv", r"in\.csv:1: the CSV header has no 'text' column"),
    (b"fine\nbad \xff byte\n", ".txt", r"in\.txt:2: not valid UTF-8"),
    ("word " * 600 + "\n", ".txt", r"example line 1 is \d+ tokens long"),
    ('{"id": "long-one", "text": "' + "word " * 600 + '"}\n', ".jsonl",
     r"example 'long-one' \(line 1\) is \d+ tokens long"),
])
def test_bad_input_is_refused_before_writing(minilm, tmp_path, content, suffix, message):
    model, tokenizer = minilm
    src = tmp_path / f"in{suffix}"
    src.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "run.h5"
    with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
        with pytest.raises(InputError, match=message):
            capture_to_file(p, lambda: iter_records(src), out)
    assert not out.exists()


def test_bad_input_on_resume_keeps_what_was_written(minilm, live_and_stored, tmp_path):
    model, tokenizer = minilm
    _, _, path = live_and_stored
    before = sha(path)
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "ok"}\n{"text": \n')
    with AttentionProbe(model, tokenizer) as p:
        with pytest.raises(InputError, match="bad.jsonl:2"):
            capture_to_file(p, lambda: iter_records(src), path, resume=True)
    assert sha(path) == before


def test_truncation_is_recorded(minilm, tmp_path):
    model, tokenizer = minilm
    src = tmp_path / "long.txt"
    src.write_text("A short one.\n" + "word " * 600 + "\n")
    with AttentionProbe(model, tokenizer, keys=["pattern"], layers=[0]) as p:
        run = capture_to_file(p, lambda: iter_records(src), tmp_path / "t.h5", truncate=True)
    with run:
        assert run.attrs["truncate"] is True or run.attrs["truncate"] == 1
        assert run[1].meta == {"truncated": True} and len(run[1].tokens) == 512
        assert run[0].meta == {}


def test_jsonl_and_csv_metadata_kept(minilm, tmp_path):
    model, tokenizer = minilm
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": f"x{i}", "text": t, "domain": d})
                               for i, (t, d) in enumerate([("A cat.", "pets"), ("No dog.", "pets")])))
    csv_path = tmp_path / "in.csv"
    csv_path.write_text('text,domain,id\n"A cat, indeed.",pets,c1\nNo dog.,pets,c2\n')
    with AttentionProbe(model, tokenizer, keys=["pattern"], layers=[0]) as p:
        for src in (jsonl, csv_path):
            with capture_to_file(p, lambda src=src: iter_records(src), tmp_path / f"{src.stem}{src.suffix}.h5") as run:
                assert run[0].meta["domain"] == "pets"
                assert run[1].meta["id"] in ("x1", "c2")
                assert run[0].text in ("A cat.", "A cat, indeed.")


def test_cli_capture_to_file_and_errors(tmp_path, tiny_model_dir):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(SENTENCES) + "\n")
    out = tmp_path / "cli.h5"
    cmd = [sys.executable, "-m", "probe.cli", "capture", str(src), "--out", str(out), "--model",
           str(tiny_model_dir), "--dtype", "float16", "--quiet", "--batch-size", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "5 examples, 5 in the input, complete" in done.stdout
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "already exists; pass --resume" in again.stderr
    missing = subprocess.run(cmd[:4] + [str(tmp_path / "nope.txt")] + cmd[5:], capture_output=True,
                             text=True)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_readme_h5py_recipe_runs_verbatim(minilm, tmp_path, monkeypatch):
    """The README's h5py-only snippet, executed as written, reads what the live capture has."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("Reading example `row` with h5py alone:")[1]
    code = re.search(r"```python\n(.*?)```", block, re.S).group(1)
    model, tokenizer = minilm
    texts = [f"Sentence {i} is {'not ' * (i % 2)}short." for i in range(9)]
    with AttentionProbe(model, tokenizer, layers=[3], keys=["pattern"]) as p:
        live = p.run(texts, batch_size=4)
        p.run_to_file(texts, tmp_path / "run.h5", batch_size=4).close()
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(code, scope)
    scope["f"].close()
    assert scope["tokens"] == live[7].tokens and scope["text"] == texts[7]
    np.testing.assert_array_equal(scope["pattern"], live[7]["blocks.3.attn.pattern"])
