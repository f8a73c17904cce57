"""`probe check-model` through its command: on every tiny family saved to a folder with the
bundled tokenizer (the CLI's loading path; the in-memory parity of each family is
tests/unit/test_families.py's), and on the bundled MiniLM, passing and failing."""

from __future__ import annotations

import pytest
import torch

from families import FAMILIES, tiny_model


def _check_cli(path):
    import argparse

    from probe.check import add_check_parser, cmd_check

    parser = argparse.ArgumentParser()
    add_check_parser(parser.add_subparsers())
    return cmd_check(parser.parse_args(["check-model", str(path)]))


@pytest.mark.parametrize("name", FAMILIES)
def test_check_model_passes_on_every_tiny_saved_config(name, tokenizer, tmp_path, capsys):
    tiny_model(name).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert _check_cli(tmp_path) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("PASS") and "FAIL" not in out
    for word in ("family", "layers", "heads", "kv heads", "windows", "sinks", "keys"):
        assert f"\n{word} " in out
    if name == "gpt_oss":
        assert "sinks              2 x yes" in out
    if name == "gemma2":
        assert "sliding(4), full" in out and "soft-capping       2 x 0.5" in out


def test_check_model_on_the_bundled_model_and_a_failure(minilm, monkeypatch, capsys):
    from probe import check

    report = check.check_model(*minilm)
    assert report.passed and report.facts["heads"] == 12 and report.diffs["pattern"] <= 1e-6
    assert set(report.diffs) == {"pattern", "scores", "rows", "z", "value_norm", "output",
                                 "hidden"}
    monkeypatch.setitem(check.TOLERANCE, torch.float32, -1.0)  # nothing can pass
    assert _check_cli("bundled:all-MiniLM-L6-v2") == 1
    assert capsys.readouterr().out.rstrip().endswith("FAIL")
