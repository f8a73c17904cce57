"""Every family on a tiny random model: exact parity with eager ``output_attentions`` and the
identities of the captured tensors, in one parametrised test; then what is special to some
families (soft-capping, sinks, alternating windows, shared layers) and the errors for models
probe cannot capture.

Families in ``conftest.ARCHS`` also run through tests/unit/test_capture_exact.py; those in
``SPECIAL`` (tests/families.py) break an assumption of that file (scaling other than
d_head**-0.5, soft-capping, sinks, per-layer windows, one module serving several layers).
``probe check-model`` on each family saved to a folder is tests/integration/test_check_model_cli.py.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import transformers as T
from torch import nn

from conftest import ARCHS, SENTENCES, _tiny, eager_reference
from families import FAMILIES, batch as _batch, out_proj_name, tiny_model
from probe import COMPONENTS, AttentionProbe, UnsupportedModelError

_eager = eager_reference


def _capture_with_outputs(name, model, tokenizer, ids, mask):
    """Capture, and record every output projection's real output, in call order per module."""
    n = len(AttentionProbe(model).layers)
    modules = [model.get_submodule(out_proj_name(name, layer)) for layer in range(n)]
    calls: dict[int, list] = {}
    handles = [m.register_forward_hook(
        lambda mod, a, o: calls.setdefault(id(mod), []).append(o.detach().clone()))
        for m in {id(m): m for m in modules}.values()]
    try:
        with AttentionProbe(model, tokenizer, keys=COMPONENTS) as p, torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    finally:
        for h in handles:
            h.remove()
    seen: dict[int, int] = {}
    outputs = []
    for m in modules:  # layer l's output is its module's k-th call (ALBERT shares one module)
        k = seen.get(id(m), 0)
        seen[id(m)] = k + 1
        outputs.append(calls[id(m)][k])
    return p, hidden, outputs, modules


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def test_family_parity_and_identities(family, tokenizer):
    """pattern == eager output_attentions; rows sum to 1 - sink; scores from q, k; z = pattern
    @ v; value-weighted vectors through W_O plus bias rebuild the output projection's output;
    hidden states unchanged; batched equals alone."""
    model = tiny_model(family)
    ids, mask = _batch(tokenizer)
    eager_hidden, attentions = _eager(model, ids, mask)
    p, hidden, outputs, modules = _capture_with_outputs(family, model, tokenizer, ids, mask)
    cap, facts = p.last, p.layer_facts
    assert len(attentions) == len(p.layers)
    real = mask.bool()
    torch.testing.assert_close(hidden[real], eager_hidden[real], rtol=0, atol=1e-6)
    has_sink = any(f["sink"] for f in facts.values())
    for layer, ref in enumerate(attentions):
        w = modules[layer].weight.detach().double().numpy()
        w = w if type(modules[layer]).__name__ == "Conv1D" else w.T  # [head*d_head, d_model]
        bias = modules[layer].bias
        bias = 0.0 if bias is None else bias.detach().double().numpy()
        scaling, softcap = facts[layer]["scaling"], facts[layer]["softcap"]
        for row, ex in enumerate(cap):
            n = int(mask[row].sum())
            key = f"blocks.{layer}.attn."
            pattern = ex[key + "pattern"].astype(np.float64)
            # 1. parity with the model's own eager attention
            np.testing.assert_allclose(ex[key + "pattern"], ref[row, :, :n, :n].numpy(),
                                       rtol=0, atol=1e-6)
            # 2. rows sum to 1, or to 1 minus the sink's share
            sink = ex[key + "sink"].astype(np.float64)
            np.testing.assert_allclose(pattern.sum(-1) + sink, 1.0, atol=1e-6)
            assert (sink > 1e-4).any() if has_sink else not sink.any()
            # 3. scores = (capped) q k^T * scaling where not masked; masked entries get no weight
            q, k, v = (ex[key + c].astype(np.float64) for c in "qkv")
            n_heads = q.shape[0]
            kv_of = np.arange(n_heads) // (n_heads // k.shape[0])
            logits = np.einsum("hqd,hkd->hqk", q, k[kv_of]) * scaling
            if softcap is not None:
                logits = np.tanh(logits / softcap) * softcap
            scores = ex[key + "scores"]
            kept = ~np.isneginf(scores)
            assert kept.any(-1).all() and (pattern[~kept] == 0).all()
            np.testing.assert_allclose(scores[kept], logits[kept], rtol=1e-5, atol=1e-5)
            # 4. z = pattern @ v with grouped-query heads expanded
            np.testing.assert_allclose(ex[key + "z"], np.einsum("hqk,hkd->hqd", pattern, v[kv_of]),
                                       rtol=1e-5, atol=1e-5)
            # 5. sum over heads and keys of alpha_hij f_h(x_j), plus the bias, is the block output
            f = np.einsum("hkd,hdm->hkm", v[kv_of], w.reshape(n_heads, -1, w.shape[-1]))
            rebuilt = np.einsum("hqk,hkm->qm", pattern, f) + bias
            np.testing.assert_allclose(rebuilt, outputs[layer][row, :n].double().numpy(),
                                       rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(ex[key + "value_norm"], np.linalg.norm(f, axis=-1),
                                       rtol=1e-4, atol=1e-5)
    # 6. a padded batch equals each sentence alone
    with AttentionProbe(model, tokenizer) as p:
        together = p.run(SENTENCES, batch_size=len(SENTENCES))
        alone = [p.run([s])[0] for s in SENTENCES]
    for a, b in zip(together, alone):
        assert a.tokens == b.tokens and set(a) == set(b)
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5, err_msg=key)


def _long(tokenizer):
    ids, mask = _batch(tokenizer, [SENTENCES[2]])
    return ids, mask


def test_gemma2_soft_capping_bounds_scores_and_bites(tokenizer):
    model = tiny_model("gemma2")
    ids, mask = _long(tokenizer)
    with AttentionProbe(model, tokenizer) as p, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    cap = model.config.attn_logit_softcapping
    assert p.layer_facts[0]["scaling"] == pytest.approx(model.config.query_pre_attn_scalar ** -0.5)
    bites = False
    for layer in range(2):
        ex, f = p.last[0], p.layer_facts[layer]
        scores = ex[f"blocks.{layer}.attn.scores"]
        assert f["softcap"] == cap and np.abs(scores[np.isfinite(scores)]).max() < cap
        q, k = ex[f"blocks.{layer}.attn.q"], ex[f"blocks.{layer}.attn.k"]
        raw = np.einsum("hqd,hkd->hqk", q, np.repeat(k, 2, axis=0)) * f["scaling"]
        bites |= bool((np.abs(np.tanh(raw / cap) * cap - raw) > 1e-2).any())
    assert bites, "the test's cap barely changes the logits; lower it"


@pytest.mark.parametrize("name", ["gemma2", "gemma3_text", "gpt_oss", "modernbert"])
def test_alternating_sliding_and_global_layers(name, tokenizer):
    """Sliding layers see a band of keys; global layers see all (causal: all earlier) keys."""
    model = tiny_model(name)
    config = model.config.get_text_config()
    ids, mask = _long(tokenizer)
    with AttentionProbe(model, tokenizer) as p, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    ex = p.last[0]
    n = len(ex.tokens)
    i, j = np.indices((n, n))
    causal = name != "modernbert"
    kinds = config.layer_types
    assert "sliding_attention" in kinds and "full_attention" in kinds
    for layer, kind in enumerate(kinds):
        seen = ~np.isneginf(ex[f"blocks.{layer}.attn.scores"][0])
        allowed = (j <= i) if causal else np.ones((n, n), bool)
        if kind == "sliding_attention":
            half = config.sliding_window if name == "modernbert" else None  # local_attention // 2
            allowed &= (np.abs(i - j) <= half) if half else (j > i - config.sliding_window)
            assert p.layer_facts[layer]["sliding_window"]
        assert np.array_equal(seen, allowed), (layer, kind)


def test_gpt_oss_sink_share_is_the_sinks_softmax_share(tokenizer):
    model = tiny_model("gpt_oss")
    ids, mask = _long(tokenizer)
    with AttentionProbe(model, tokenizer) as p, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    for layer in range(2):
        ex = p.last[0]
        scores = ex[f"blocks.{layer}.attn.scores"].astype(np.float64)
        s = model.layers[layer].self_attn.sinks.detach().double().numpy()[:, None]
        top = np.maximum(scores.max(-1), s)
        share = np.exp(s - top) / (np.exp(s - top) + np.exp(scores - top[..., None]).sum(-1))
        np.testing.assert_allclose(ex[f"blocks.{layer}.attn.sink"], share, rtol=1e-5, atol=1e-6)
        assert (ex[f"blocks.{layer}.attn.pattern"].sum(-1) < 1 - 1e-4).all()


def test_albert_layers_share_one_module_but_are_captured_separately(tokenizer):
    model = tiny_model("albert")
    with AttentionProbe(model, tokenizer) as p:
        assert len({id(layer.module) for layer in p.layers}) == 1 and len(p.layers) == 3
        ex = p.run([SENTENCES[2]])[0]
    q = [ex[f"blocks.{layer}.attn.q"] for layer in range(3)]
    assert not np.allclose(q[0], q[1]) and not np.allclose(q[1], q[2])


def test_opt_query_is_pre_scaled(tokenizer):
    model = tiny_model("opt")
    with AttentionProbe(model, tokenizer) as p:
        p.run([SENTENCES[0]])
    assert all(f["scaling"] == 1.0 for f in p.layer_facts.values())


@pytest.mark.parametrize("config,reason", [
    (lambda: T.DebertaV2Config(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=37),
     "DisentangledSelfAttention.*computes attention itself"),
    (lambda: T.FalconConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4), "FalconAttention.*computes attention itself"),
    (lambda: T.BloomConfig(vocab_size=100, hidden_size=32, n_layer=2, n_head=4),
     "BloomAttention.*computes attention itself"),
    (lambda: T.GPTNeoConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
                            attention_types=[[["global", "local"], 1]]),
     "GPTNeoSelfAttention.*computes attention itself"),
    (lambda: T.T5Config(vocab_size=100, d_model=32, num_layers=2, num_heads=4, d_kv=8, d_ff=37),
     "encoder-decoder"),
], ids=["deberta-v2", "falcon", "bloom", "gpt-neo", "t5"])
def test_models_outside_the_interface_are_refused_with_the_reason(config, reason):
    model = T.AutoModel.from_config(config())
    with pytest.raises(UnsupportedModelError, match=reason):
        AttentionProbe(model)


class _SelfComputing(nn.Module):
    """Attention that never calls transformers' attention interface (the interface's name
    appears nowhere in this class's source)."""

    def forward(self, hidden_states):
        return hidden_states


def test_detection_reads_each_source_once_and_sees_a_new_class(monkeypatch):
    """inspect.getsource parses a class's whole model file per call (building a MiniLM probe
    took 146 ms reading it per layer, 2 ms now: benchmarks/probe_build.py): detection reads each
    class and eager function once, and a class or function defined later (a notebook reload, a
    patched model file) is read afresh."""
    import inspect

    from probe.architectures import detection

    detection._class_uses_interface.cache_clear()
    detection._eager_function_surprise.cache_clear()
    reads = []
    real = inspect.getsource
    monkeypatch.setattr(inspect, "getsource", lambda obj: reads.append(obj) or real(obj))
    model = T.AutoModel.from_config(ARCHS["llama"][0]())
    AttentionProbe(model)
    first = len(reads)
    assert first and len(set(reads)) == first  # two layers, each source read once
    AttentionProbe(model)
    assert len(reads) == first
    module = sys.modules[type(model.layers[0].self_attn).__module__]

    def eager_attention_forward(module, query, key, value, attention_mask, scaling, bias, **kw):
        raise AssertionError("never called")

    monkeypatch.setattr(module, "eager_attention_forward", eager_attention_forward)
    with pytest.raises(UnsupportedModelError, match="takes bias"):
        AttentionProbe(model)
    for layer in model.layers:
        layer.self_attn.__class__ = _SelfComputing
    with pytest.raises(UnsupportedModelError, match="_SelfComputing.*computes attention itself"):
        AttentionProbe(model)


def test_detection_names_the_part_it_did_not_find():
    model = T.AutoModel.from_config(ARCHS["llama"][0]())
    for layer in model.layers:  # a renamed output projection
        layer.self_attn.proj_after = layer.self_attn.o_proj
        del layer.self_attn.o_proj
    with pytest.raises(UnsupportedModelError, match="no output projection.*o_proj"):
        AttentionProbe(model)
    for layer in model.layers:  # and renamed query/key/value projections
        layer.self_attn.wq = layer.self_attn.q_proj
        del layer.self_attn.q_proj
    with pytest.raises(UnsupportedModelError, match="found no attention module.*q_proj/k_proj"):
        AttentionProbe(model)
    model = T.AutoModel.from_config(ARCHS["llama"][0]())
    del model.layers[1]  # fewer attention modules than config.num_hidden_layers
    with pytest.raises(UnsupportedModelError, match="found 1 attention modules.*config has 2"):
        AttentionProbe(model)


def test_sink_is_a_default_key_only_for_models_with_sinks():
    assert not any(k.endswith(".sink") for k in AttentionProbe(_tiny("llama")).exposed_keys)
    assert any(k.endswith(".sink") for k in AttentionProbe(tiny_model("gpt_oss")).exposed_keys)
