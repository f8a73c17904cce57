"""Behaviours that mutation testing found unguarded: each test fails when its behaviour is
broken (refusing attention variants probe does not model, the dropout branch, capture
slicing, the missing-layers error, never overwriting a published run)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import _tiny
from probe import AttentionProbe, Capture, InputError, ProbeError, UnsupportedModelError
from probe.capture import _probe_attention


def _qkv(batch=1, heads=2, n=3, d=4):
    torch.manual_seed(0)
    return (torch.randn(batch, heads, n, d), torch.randn(batch, heads, n, d),
            torch.randn(batch, heads, n, d))


@pytest.mark.parametrize("name", ["position_bias", "sinks", "sink_scale"])
def test_unmodelled_attention_variants_are_refused(name):
    q, k, v = _qkv()
    module = torch.nn.Module().eval()
    with pytest.raises(UnsupportedModelError, match=name):
        _probe_attention(module, q, k, v, None, scaling=0.5, **{name: torch.zeros(1)})
    out, pattern = _probe_attention(module, q, k, v, None, scaling=0.5)
    assert torch.allclose(pattern.sum(-1), torch.ones(1, 2, 3))


def test_dropout_applies_in_training_only():
    q, k, v = _qkv()
    module = torch.nn.Module()
    module.eval()
    out_eval, pattern = _probe_attention(module, q, k, v, None, scaling=0.5, dropout=0.5)
    expected = torch.matmul(pattern, v).transpose(1, 2)
    assert torch.allclose(out_eval, expected)  # eval: dropout is ignored
    module.train()
    torch.manual_seed(1)
    out_train, pattern = _probe_attention(module, q, k, v, None, scaling=0.5, dropout=0.5)
    torch.manual_seed(1)
    dropped = torch.nn.functional.dropout(pattern, p=0.5, training=True)
    assert torch.allclose(out_train, torch.matmul(dropped, v).transpose(1, 2))
    assert not torch.allclose(out_train, out_eval)


def test_capture_slicing(tokenizer):
    model = _tiny("bert")
    with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
        caps = p.run(["A b.", "C d e.", "F.", "G h i j."])
    part = caps[1:3]
    assert isinstance(part, Capture) and len(part) == 2 and part.keys == caps.keys
    assert [ex.text for ex in part] == ["C d e.", "F."]
    assert np.array_equal(part[0]["blocks.0.attn.pattern"], caps[1]["blocks.0.attn.pattern"])
    assert [ex.text for ex in caps[::-2]] == ["G h i j.", "C d e."]


def test_layers_the_backend_never_saw_are_an_error(tokenizer):
    model = _tiny("bert")
    ids = torch.tensor([tokenizer("A robin is a bird.")["input_ids"]])
    with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
        hidden = model.encoder.layer[1].attention.self
        saved = hidden.forward
        # layer 1 computes its attention without the interface: the probe must notice
        hidden.forward = lambda *a, **k: _bypass(hidden, saved, *a, **k)
        try:
            with pytest.raises(UnsupportedModelError, match=r"layers \[1\] were not seen"):
                model(input_ids=ids)
        finally:
            hidden.forward = saved


def _bypass(module, forward, hidden_states, *args, **kwargs):
    """The module's forward with the probe's entry for it removed for this one call."""
    from probe.backends import REGISTRY

    entry = REGISTRY.unbind(module)
    try:
        return forward(hidden_states, *args, **kwargs)
    finally:
        REGISTRY.bind(module, entry)


def test_a_run_is_never_published_over_an_existing_file(tmp_path):
    from probe.store.files import publish as _publish

    final, tmp = tmp_path / "run.h5", tmp_path / "run.h5.creating"
    final.write_bytes(b"precious")
    tmp.write_bytes(b"new")
    with pytest.raises(InputError, match="already exists"):
        _publish(str(tmp), str(final))
    assert final.read_bytes() == b"precious" and not tmp.exists()
    assert issubclass(InputError, ProbeError)
