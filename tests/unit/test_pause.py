"""The public switch that pauses recording (``probe.paused()``), for both probes and for the
Patcher, which runs interventions with recording paused: nothing is recorded inside the block,
the backend still runs (interventions apply), blocks nest, and recording resumes on leaving,
also through an exception."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from conftest import SENTENCES, VOCAB, _tiny
from probe import AttentionProbe, EncoderDecoderProbe, Patcher, ProbeError
from probe.capture import BACKEND
from probe.inputs import pad


def _batch(tokenizer, n=2):
    return pad([tokenizer(t)["input_ids"] for t in SENTENCES[:n]], 0, "cpu")


def test_paused_probe_records_nothing_and_resumes(tokenizer):
    model = _tiny("bert")
    ids, mask = _batch(tokenizer)
    with AttentionProbe(model, tokenizer, keys=["pattern"]) as p, torch.no_grad():
        assert p.recording
        with p.paused() as same:
            assert same is p and not p.recording
            with p.paused():
                model(input_ids=ids, attention_mask=mask)
            assert not p.recording  # still inside the outer block
            model(input_ids=ids, attention_mask=mask)
            assert model.config._attn_implementation == BACKEND
            with pytest.raises(ProbeError, match="recording is paused"):
                p.capture_ids([ids[0].tolist()])
        assert p.captures == [] and p.layer_facts == {}
        assert p.recording
        model(input_ids=ids, attention_mask=mask)
        assert len(p.captures) == 1 and sorted(p.layer_facts) == [0, 1]
        assert p.capture_ids([ids[0].tolist()])[0].tokens[0] == "[CLS]"


def test_paused_probe_still_runs_interventions(tokenizer):
    model = _tiny("bert")
    ids, mask = _batch(tokenizer)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).last_hidden_state
        with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
            p.intervention = lambda layer, pattern, value, z: (pattern, torch.zeros_like(z))
            with p.paused():
                zeroed = model(input_ids=ids, attention_mask=mask).last_hidden_state
            assert p.captures == []
    assert not torch.allclose(plain, zeroed)


def test_pause_ends_with_an_exception(tokenizer):
    p = AttentionProbe(_tiny("bert"), tokenizer)
    with pytest.raises(RuntimeError, match="boom"):
        with p.paused():
            raise RuntimeError("boom")
    assert p.recording


def test_paused_encoder_decoder_probe_records_nothing(tokenizer):
    model = T.BartModel(T.BartConfig(vocab_size=VOCAB, d_model=16, encoder_layers=1,
                                     decoder_layers=1, encoder_attention_heads=2,
                                     decoder_attention_heads=2, encoder_ffn_dim=16,
                                     decoder_ffn_dim=16, max_position_embeddings=64,
                                     decoder_start_token_id=102, pad_token_id=0)).eval()
    rows = [tokenizer(t)["input_ids"] for t in SENTENCES[:2]]
    with EncoderDecoderProbe(model, tokenizer, keys=["pattern"]) as p:
        with p.paused():
            with pytest.raises(ProbeError, match="recording is paused"):
                p.run_ids(rows)
            assert p.captures == [] and p.layer_facts == {}
        capture = p.run_ids(rows)
    assert len(capture) == 2 and p.layer_facts


def test_patcher_records_nothing(tokenizer):
    model = _tiny("bert")
    with Patcher(model, tokenizer, metric="embedding") as pt:
        assert not pt.probe.recording
        pt.effect("A robin is a bird.", "A robin is not a bird.", heads=[(1, 2)])
        assert pt.probe.captures == [] and pt.probe.layer_facts == {}
    assert pt.probe.recording
