"""Acceptance on the real pretrained all-MiniLM-L6-v2 (the bundled default model)."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModel

from conftest import SENTENCES
from probe import AttentionProbe, default_model_path
from probe.inputs import pad


def test_minilm_matches_its_own_eager_attentions(minilm):
    model, tokenizer = minilm
    assert model.config._attn_implementation == "sdpa"  # v5 default: no weights returned
    reference = AutoModel.from_pretrained(default_model_path(), attn_implementation="eager").eval()
    ids, mask = pad([tokenizer(t)["input_ids"] for t in SENTENCES], 0, "cpu")
    with torch.no_grad():
        ref = reference(input_ids=ids, attention_mask=mask, output_attentions=True)
    with AttentionProbe(model, tokenizer) as p:
        # same batch as the reference (other batchings differ by float rounding, ~1e-6)
        cap = p.run(SENTENCES, batch_size=len(SENTENCES))
    assert len(cap) == len(SENTENCES)
    for row, ex in enumerate(cap):
        n = int(mask[row].sum())
        assert ex.text == SENTENCES[row]
        assert ex.tokens == tokenizer.convert_ids_to_tokens(ids[row, :n].tolist())
        for layer in range(6):
            pattern = ex[f"blocks.{layer}.attn.pattern"]
            assert pattern.shape == (12, n, n)
            np.testing.assert_array_equal(pattern, ref.attentions[layer][row, :, :n, :n].numpy())
            np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-6)
            assert ex[f"blocks.{layer}.attn.q"].shape == (12, n, 32)
            assert ex[f"blocks.{layer}.attn.value_norm"].shape == (12, n)
    # the negated sentence differs from the original in every layer's patterns
    assert cap[1].tokens[4] == "not"


def test_minilm_value_weighted_rebuilds_attention_output(minilm):
    model, tokenizer = minilm
    outputs = {}
    dense = model.encoder.layer[4].attention.output.dense
    handle = dense.register_forward_hook(lambda m, a, o: outputs.__setitem__("o", o.detach()))
    try:
        with AttentionProbe(model, tokenizer, layers=[4], keys=["pattern", "v"]) as p:
            ex = p.run([SENTENCES[2]])[0]
    finally:
        handle.remove()
    w = dense.weight.detach().double().numpy().T.reshape(12, 32, 384)
    f = np.einsum("hkd,hdm->hkm", ex["blocks.4.attn.v"].astype(np.float64), w)
    rebuilt = np.einsum("hqk,hkm->qm", ex["blocks.4.attn.pattern"], f) + dense.bias.detach().numpy()
    np.testing.assert_allclose(rebuilt, outputs["o"][0].numpy(), rtol=1e-4, atol=1e-4)
