"""`probe check-model` on encoder-decoders: PASS on tiny T5, BART and Whisper, FAIL when the
capture differs from eager attention, and the CLI on a saved model folder."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from probe import check_encdec
from probe.check import check_model
from probe.cli import main
from test_encdec import CONFIGS


def _model(name):
    torch.manual_seed(0)
    return T.AutoModel.from_config(CONFIGS[name]()).eval()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_check_model_passes_on_each_tiny_encoder_decoder(name, tokenizer):
    report = check_model(_model(name), None if name == "whisper" else tokenizer)
    assert report.passed, report.format()
    assert set(report.diffs) == {f"{site} {check}" for site in ("encoder", "decoder", "cross")
                                 for check in ("pattern", "rows", "z")}
    assert report.diffs["cross pattern"] <= 1e-6
    assert report.facts["family"].lower().startswith(name[:4])


def test_check_model_fails_when_the_capture_differs_from_eager(tokenizer, monkeypatch):
    real = check_encdec._eager

    def shifted(model, inputs):
        out = real(model, inputs)
        out.cross_attentions[1][..., 0] += 0.01      # a reference the capture no longer matches
        return out

    monkeypatch.setattr(check_encdec, "_eager", shifted)
    report = check_model(_model("bart"), tokenizer)
    assert not report.passed and report.diffs["cross pattern"] > 0.009
    assert report.diffs["encoder pattern"] <= 1e-6 and "FAIL" in report.format()


def test_cli_check_model_on_a_saved_encoder_decoder(tmp_path, tokenizer, capsys):
    _model("t5").save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert main(["check-model", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cross pattern" in out and out.rstrip().endswith("PASS")
