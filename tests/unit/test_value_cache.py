"""Value norms from a per-probe cache of what W_O gives them, and scores filled in place.

The probe keeps, per layer, a factor computed once from W_O (:func:`probe.attention.
value_norm_factor`) and recomputes it only when W_O changes; it sets masked scores to -inf in
place. References here are from scratch, in float64, from the captured values and the weights
as they are at the time of the call.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import probe.recording as capture_module  # where the factor cache lives
from conftest import ARCHS, OUT_PROJ, SENTENCES, _tiny
from probe import AttentionProbe
from probe.inputs import pad

# float32 norms through the float64 factor against a float64 computation from scratch
RTOL, ATOL = 1e-5, 1e-6


def _batch(tokenizer, texts=SENTENCES):
    return pad([tokenizer(t)["input_ids"] for t in texts], 0, "cpu")


def _w_o(model, arch, layer):
    """[head*d_head, d_model] in float64, read from the module as it is now."""
    w = model.get_submodule(OUT_PROJ[arch].format(l=layer)).weight.detach().double()
    return w if arch == "gpt2" else w.T


def _reference_norms(v, w, n_heads):
    """||v_j W_O^h|| from scratch in float64: v [batch, kv_head, token, d_head]."""
    v = torch.as_tensor(v).double()
    kv_of = torch.arange(n_heads) // (n_heads // v.shape[1])
    w_heads = w.reshape(n_heads, v.shape[-1], -1)  # [head, d_head, d_model]
    return torch.einsum("bhtd,hdm->bhtm", v[:, kv_of], w_heads).norm(dim=-1)


def _check_norms(model, arch, batch_capture, n_layers):
    for layer in range(n_layers):
        got = batch_capture.arrays[f"blocks.{layer}.attn.value_norm"]
        v = batch_capture.arrays[f"blocks.{layer}.attn.v"]
        ref = _reference_norms(v, _w_o(model, arch, layer), got.shape[1])
        np.testing.assert_allclose(got, ref.numpy(), rtol=RTOL, atol=ATOL, err_msg=f"layer {layer}")


@pytest.fixture
def counted(monkeypatch):
    """How often the probe computes a factor from W_O."""
    calls = []
    real = capture_module.value_norm_factor

    def counting(w, n_heads):
        calls.append(n_heads)
        return real(w, n_heads)

    monkeypatch.setattr(capture_module, "value_norm_factor", counting)
    return calls


@pytest.mark.parametrize("arch", ["llama", "bert", "gpt2"])
def test_edits_of_w_o_give_new_correct_norms(arch, tokenizer, counted):
    model = copy.deepcopy(_tiny(arch))  # edited below: never the shared fixture
    n_layers = model.config.num_hidden_layers
    proj = model.get_submodule(OUT_PROJ[arch].format(l=0))
    ids, mask = _batch(tokenizer)

    def run():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        return p.last.batch

    with AttentionProbe(model, keys=["v", "value_norm"]) as p:
        first = run()
        _check_norms(model, arch, first, n_layers)
        assert len(counted) == n_layers
        run()
        assert len(counted) == n_layers, "unchanged weights must not be refactored"

        proj.weight.data.mul_(2)  # .data: no version counter moves
        doubled = run()
        _check_norms(model, arch, doubled, n_layers)
        np.testing.assert_allclose(doubled.arrays["blocks.0.attn.value_norm"],
                                   2 * first.arrays["blocks.0.attn.value_norm"], rtol=RTOL, atol=ATOL)
        assert len(counted) == n_layers + 1, "only the edited layer is refactored"

        proj.weight = torch.nn.Parameter(torch.randn_like(proj.weight))  # a new Parameter
        _check_norms(model, arch, run(), n_layers)

        d_head = first.arrays["blocks.0.attn.v"].shape[-1]
        with torch.no_grad():  # ablate head 1 (its slice of W_O's input axis)
            if arch == "gpt2":
                proj.weight[d_head:2 * d_head] = 0
            else:
                proj.weight[:, d_head:2 * d_head] = 0
        ablated = run()
        _check_norms(model, arch, ablated, n_layers)
        assert not ablated.arrays["blocks.0.attn.value_norm"][:, 1].any()
        assert ablated.arrays["blocks.0.attn.value_norm"][:, 0][mask.bool().numpy()].all()


def test_minilm_norms_against_float64_reference(minilm, tokenizer):
    """Real weights: the stated tolerance (rtol 1e-5) holds on the bundled model."""
    model, _ = minilm
    ids, mask = _batch(tokenizer)
    with AttentionProbe(model, keys=["v", "value_norm"]) as p, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    _check_norms(model, "bert", p.last.batch, model.config.num_hidden_layers)


def _expected_scores(q, k, allowed, scaling):
    """q k^T * scaling in float64 with -inf where ``allowed`` [batch, query, key] is False."""
    q, k = torch.as_tensor(q).double(), torch.as_tensor(k).double()
    kv_of = torch.arange(q.shape[1]) // (q.shape[1] // k.shape[1])
    scores = q @ k[:, kv_of].transpose(-1, -2) * scaling
    return scores.masked_fill(~allowed[:, None], float("-inf"))


@pytest.mark.parametrize("arch", ["llama", "bert"])
@pytest.mark.parametrize("padded", [True, False])
def test_scores_equal_reference(arch, padded, tokenizer):
    model = _tiny(arch)
    causal = ARCHS[arch][1]
    texts = SENTENCES if padded else SENTENCES[2:3]
    ids, mask = _batch(tokenizer, texts)
    call_mask = mask if padded else None
    width = ids.shape[1]
    allowed = mask.bool()[:, None, :].expand(-1, width, -1).clone()
    if causal:
        allowed &= torch.ones(width, width, dtype=torch.bool).tril()
    with AttentionProbe(model) as p, torch.no_grad():
        model(input_ids=ids, attention_mask=call_mask)
    batch = p.last.batch
    for layer in range(model.config.num_hidden_layers):
        got = torch.from_numpy(batch.arrays[f"blocks.{layer}.attn.scores"]).double()
        q = batch.arrays[f"blocks.{layer}.attn.q"]
        ref = _expected_scores(q, batch.arrays[f"blocks.{layer}.attn.k"], allowed, q.shape[-1] ** -0.5)
        assert torch.equal(torch.isneginf(got), torch.isneginf(ref)), f"layer {layer}"
        if not padded and not causal:
            assert torch.isfinite(got).all()
        keep = torch.isfinite(ref)
        torch.testing.assert_close(got[keep], ref[keep], rtol=1e-5, atol=1e-5)
        # the in-place fill left the pattern alone: rows of real queries are softmax(reference)
        pattern = torch.from_numpy(batch.arrays[f"blocks.{layer}.attn.pattern"]).double()
        real = mask.bool()
        torch.testing.assert_close(pattern.transpose(1, 2)[real],
                                   torch.softmax(ref, -1).transpose(1, 2)[real], rtol=0, atol=2e-6)


def test_capture_with_gradients_still_backpropagates(tokenizer):
    """Scores are filled out of place when autograd tracks them; gradients flow as without
    the probe."""
    model = copy.deepcopy(_tiny("llama"))
    ids, mask = _batch(tokenizer)
    real = mask.bool()
    grads = []
    for use_probe in (False, True):
        model.zero_grad()
        if use_probe:
            with AttentionProbe(model) as p:
                out = model(input_ids=ids, attention_mask=mask).last_hidden_state
                out[real].sum().backward()
            assert np.isneginf(p.last.batch.arrays["blocks.0.attn.scores"]).any()
        else:
            model.set_attn_implementation("eager")
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state
            out[real].sum().backward()
        grads.append(model.get_submodule(OUT_PROJ["llama"].format(l=0)).weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)
