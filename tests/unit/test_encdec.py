"""Encoder-decoders (T5, BART, Whisper) on tiny random models: encoder self-attention, decoder
self-attention and cross-attention each equal transformers' own eager ``output_attentions``
(``encoder_attentions``, ``decoder_attentions``, ``cross_attentions``), padding excluded; the
identities of the captured tensors; a padded batch equals each example alone; the model is
exactly as before afterwards; what is refused, and the key names."""

from __future__ import annotations

import functools
import pickle

import numpy as np
import pytest
import torch
import transformers as T

from conftest import SENTENCES, VOCAB
from probe import AttentionProbe, UnsupportedModelError, names
from probe.encdec import EncoderDecoderProbe
from probe.errors import InputError, ProbeError
from probe.inputs import pad

_IDS = dict(pad_token_id=0, bos_token_id=101, eos_token_id=102)
CONFIGS = {
    # relative position bias (small bucket table so that it varies over a sentence), scaling 1.0,
    # and a decoder deeper than the encoder
    "t5": lambda: T.T5Config(vocab_size=VOCAB, d_model=32, num_layers=2, num_decoder_layers=3,
                             num_heads=4, d_kv=8, d_ff=37, relative_attention_num_buckets=8,
                             relative_attention_max_distance=16, decoder_start_token_id=0,
                             pad_token_id=0, eos_token_id=102),
    "bart": lambda: T.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                                 encoder_attention_heads=4, decoder_attention_heads=4,
                                 encoder_ffn_dim=37, decoder_ffn_dim=37,
                                 max_position_embeddings=64, decoder_start_token_id=102, **_IDS),
    # the query is scaled before the attention function (scaling 1.0); k_proj has no bias
    "whisper": lambda: T.WhisperConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2,
                                       decoder_layers=2, encoder_attention_heads=4,
                                       decoder_attention_heads=4, encoder_ffn_dim=37,
                                       decoder_ffn_dim=37, num_mel_bins=8,
                                       max_source_positions=12, max_target_positions=32,
                                       decoder_start_token_id=101, **_IDS),
}
# output projection of each site's layer l, named independently of probe's detection
OUT = {
    "t5": {("encoder", "attn"): "encoder.block.{l}.layer.0.SelfAttention.o",
           ("decoder", "attn"): "decoder.block.{l}.layer.0.SelfAttention.o",
           ("decoder", "cross_attn"): "decoder.block.{l}.layer.1.EncDecAttention.o"},
    "bart": {("encoder", "attn"): "encoder.layers.{l}.self_attn.out_proj",
             ("decoder", "attn"): "decoder.layers.{l}.self_attn.out_proj",
             ("decoder", "cross_attn"): "decoder.layers.{l}.encoder_attn.out_proj"},
}
OUT["whisper"] = OUT["bart"]
# the reference output's attentions of each site
REF = {("encoder", "attn"): "encoder_attentions", ("decoder", "attn"): "decoder_attentions",
       ("decoder", "cross_attn"): "cross_attentions"}
SITES = tuple(REF)
TARGETS = ["Yes.", "A robin is a bird that sings in spring.", "Penguins swim.",
           "No, never.", "The budget was approved."]


@functools.lru_cache(maxsize=None)
def tiny(name: str):
    torch.manual_seed(1234)
    model = T.AutoModel.from_config(CONFIGS[name]()).eval()
    with torch.no_grad():  # widen weights so that patterns are far from uniform
        for pname, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in pname and "shared" not in pname:
                p.mul_(3.0)
    return model


def _features(n: int, seed: int = 0):
    config = tiny("whisper").config
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, config.num_mel_bins, 2 * config.max_source_positions, generator=g)


def _rows(name, tokenizer):
    """Encoder inputs (ids or Whisper features) and decoder id rows, as run() builds them."""
    start = tiny(name).config.decoder_start_token_id
    dec = [[start] + tokenizer(t)["input_ids"][:-1] for t in TARGETS]
    if name == "whisper":
        return None, _features(len(TARGETS)), dec
    return [tokenizer(t)["input_ids"] for t in SENTENCES], None, dec


def _inputs(name, tokenizer):
    enc, features, dec = _rows(name, tokenizer)
    dec_ids, dec_mask = pad(dec, 0, "cpu")
    inputs = dict(decoder_input_ids=dec_ids, decoder_attention_mask=dec_mask, use_cache=False)
    if features is not None:
        inputs["input_features"] = features
        enc_mask = torch.ones(len(dec), tiny(name).config.max_source_positions, dtype=torch.long)
    else:
        inputs["input_ids"], enc_mask = pad(enc, 0, "cpu")
        inputs["attention_mask"] = enc_mask
    return inputs, enc_mask, dec_mask


def _eager(model, inputs):
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(**inputs, output_attentions=True)
    finally:
        model.set_attn_implementation(before)


def _bias(model, name, stack, n_q, n_k):
    """T5's relative position bias of a self-attention, from the model's own layer 0."""
    if name != "t5":
        return 0.0
    attn = getattr(model, stack).block[0].layer[0].SelfAttention
    with torch.no_grad():
        return attn.compute_bias(n_q, n_k)[0].double().numpy()


@pytest.fixture(params=sorted(CONFIGS))
def family(request):
    return request.param


def test_three_kinds_equal_eager_and_their_identities(family, tokenizer):
    """pattern == eager encoder/decoder/cross attentions; rows sum to 1; scores = q k^T *
    scaling + position bias (T5) where kept, causal in the decoder; z = pattern @ v;
    value-weighted vectors through W_O plus bias rebuild the output projection's output;
    value_norm by hand; hidden states unchanged."""
    model = tiny(family)
    inputs, enc_mask, dec_mask = _inputs(family, tokenizer)
    ref = _eager(model, inputs)
    outputs, handles = {}, []
    for site, pattern in OUT[family].items():
        n = len(getattr(ref, REF[site]))
        for layer in range(n):
            module = model.get_submodule(pattern.format(l=layer))
            handles.append(module.register_forward_hook(
                lambda m, a, o, k=(site, layer): outputs.__setitem__(k, o.detach().clone())))
    try:
        with EncoderDecoderProbe(model, tokenizer) as p, torch.no_grad():
            hidden = model(**inputs).last_hidden_state
    finally:
        for h in handles:
            h.remove()
    real = dec_mask.bool()
    torch.testing.assert_close(hidden[real], ref.last_hidden_state[real], rtol=0, atol=1e-6)
    cap = p.last
    bias_bites = False
    for site in SITES:
        stack, where = site
        attentions = getattr(ref, REF[site])
        found = p.layers.cross if where == "cross_attn" else getattr(p.layers, stack)
        assert len(attentions) == len(found)
        for layer, reference in enumerate(attentions):
            out_proj = model.get_submodule(OUT[family][site].format(l=layer))
            w = out_proj.weight.detach().double().numpy().T  # [head * d_head, d_model]
            bias = 0.0 if out_proj.bias is None else out_proj.bias.detach().double().numpy()
            facts = p.layer_facts[f"{stack}.blocks.{layer}.{where}"]
            for row, ex in enumerate(cap):
                n_enc, n_dec = int(enc_mask[row].sum()), int(dec_mask[row].sum())
                n_q = n_enc if stack == "encoder" else n_dec
                n_k = n_dec if site == ("decoder", "attn") else n_enc
                key = names.key(layer, "pattern", stack=stack, site=where)[: -len("pattern")]
                pattern = ex[key + "pattern"].astype(np.float64)
                assert pattern.shape == (4, n_q, n_k)
                # 1. parity with the model's own eager attention, padding excluded
                np.testing.assert_allclose(ex[key + "pattern"],
                                           reference[row, :, :n_q, :n_k].numpy(), rtol=0, atol=1e-6)
                # 2. rows sum to 1
                np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-6)
                # 3. scores = q k^T * scaling + position bias where kept; causal decoder
                q, k, v = (ex[key + c].astype(np.float64) for c in "qkv")
                logits = np.einsum("hqd,hkd->hqk", q, k) * facts["scaling"]
                if where == "attn":
                    position = _bias(model, family, stack, n_q, n_k)
                    logits = logits + position
                    bias_bites |= family == "t5" and np.ptp(position) > 0.1
                scores = ex[key + "scores"]
                kept = ~np.isneginf(scores)
                expected = (np.tril(np.ones((n_q, n_k), bool)) if site == ("decoder", "attn")
                            else np.ones((n_q, n_k), bool))
                assert (kept == expected[None]).all() and (pattern[~kept] == 0).all()
                np.testing.assert_allclose(scores[kept], logits[kept], rtol=1e-5, atol=1e-5)
                # 4. z = pattern @ v
                np.testing.assert_allclose(ex[key + "z"], np.einsum("hqk,hkd->hqd", pattern, v),
                                           rtol=1e-5, atol=1e-5)
                # 5. sum over heads and keys of alpha_hij f_h(x_j), plus bias = projection output
                f = np.einsum("hkd,hdm->hkm", v, w.reshape(4, -1, w.shape[-1]))
                rebuilt = np.einsum("hqk,hkm->qm", pattern, f) + bias
                real_out = outputs[(site, layer)][row, :n_q].double().numpy()
                np.testing.assert_allclose(rebuilt, real_out, rtol=1e-4, atol=1e-4)
                np.testing.assert_allclose(ex[key + "value_norm"], np.linalg.norm(f, axis=-1),
                                           rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(ex[key + "value_weighted"],
                                           pattern * np.linalg.norm(f, axis=-1)[:, None, :],
                                           rtol=1e-4, atol=1e-5)
    if family == "t5":
        assert bias_bites, "the tiny T5's position bias is flat; the test would not see it"
        assert p.layer_facts["encoder.blocks.0.attn"] == {"scaling": 1.0, "position_bias": True}
        assert not p.layer_facts["decoder.blocks.0.cross_attn"]["position_bias"]
    if family == "whisper":
        assert all(f["scaling"] == 1.0 for f in p.layer_facts.values())


def test_padded_batch_equals_each_example_alone(family, tokenizer):
    model = tiny(family)
    with EncoderDecoderProbe(model, tokenizer) as p:
        if family == "whisper":
            features = _features(len(TARGETS), seed=1)
            together = p.run(input_features=features, decoder_texts=TARGETS, batch_size=5)
            alone = [p.run(input_features=features[i:i + 1], decoder_texts=[t])[0]
                     for i, t in enumerate(TARGETS)]
        else:
            together = p.run(SENTENCES, TARGETS, batch_size=5)
            alone = [p.run([s], [t])[0] for s, t in zip(SENTENCES, TARGETS)]
    assert len(together) == len(TARGETS)
    for i, (a, b) in enumerate(zip(together, alone)):
        assert a.index == i and a.decoder_text == TARGETS[i]
        assert a.tokens == b.tokens and a.decoder_tokens == b.decoder_tokens
        start = model.config.decoder_start_token_id
        assert a.decoder_input_ids.tolist() == [start] + tokenizer(TARGETS[i])["input_ids"][:-1]
        n_sites = 8 if family == "t5" else 6  # encoder + decoder self + cross layers
        assert set(a) == set(b) and len(a) == 8 * n_sites  # every component but sink
        # transformers' own eager T5 differs by up to 7e-6 (hidden states of magnitude 3)
        # between this batch and each example alone: matmul blocking depends on the shapes
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=5e-5, err_msg=key)


def test_decoder_inputs_default_and_shift_right(tokenizer):
    model = tiny("t5")
    with EncoderDecoderProbe(model, tokenizer, keys=["pattern"]) as p:
        ex = p.run([SENTENCES[0]])[0]
        assert ex.decoder_input_ids.tolist() == [0]  # decoder_start_token_id alone
        assert ex["decoder.blocks.2.cross_attn.pattern"].shape == (4, 1, len(ex.tokens))
        ex = p.run([SENTENCES[0]], ["A bird."])[0]
        labels = tokenizer("A bird.")["input_ids"]
        assert ex.decoder_input_ids.tolist() == [0] + labels[:-1]
        ex = p.run([SENTENCES[0]], decoder_input_ids=[[0, 7, 8]])[0]
        assert ex.decoder_input_ids.tolist() == [0, 7, 8]
        with pytest.raises(InputError, match="not both"):
            p.run([SENTENCES[0]], ["x"], decoder_input_ids=[[0]])
        with pytest.raises(InputError, match="exactly one encoder input"):
            p.run(decoder_texts=["x"])


def test_key_selection(tokenizer):
    model = tiny("t5")  # encoder 2 layers, decoder 3
    p = EncoderDecoderProbe(model, tokenizer, keys=["decoder.blocks.2.cross_attn.pattern",
                                                    "encoder.blocks.0.attn.z"])
    assert p.exposed_keys == ["encoder.blocks.0.attn.z", "decoder.blocks.2.cross_attn.pattern"]
    p = EncoderDecoderProbe(model, tokenizer, layers=[-1], keys=["pattern"])
    assert p.exposed_keys == ["encoder.blocks.1.attn.pattern", "decoder.blocks.2.attn.pattern",
                              "decoder.blocks.2.cross_attn.pattern"]
    with p:
        ex = p.run([SENTENCES[1]], [TARGETS[1]])[0]
    assert list(ex) == p.exposed_keys
    with pytest.raises(InputError, match="name their stack"):
        EncoderDecoderProbe(model, keys=["blocks.0.attn.pattern"])
    with pytest.raises(InputError, match="decoder has layers 0..2"):
        EncoderDecoderProbe(model, keys=["decoder.blocks.3.attn.pattern"])


def _state(model):
    hooks = {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks))
             for name, m in model.named_modules()}
    impls = {name: getattr(getattr(m, "config", None), "_attn_implementation", None)
             for name, m in model.named_modules()}
    return hooks, impls


def test_model_is_restored_bit_identically(family, tokenizer):
    from transformers import AttentionInterface

    model = tiny(family)
    inputs, _, _ = _inputs(family, tokenizer)
    with torch.no_grad():
        before = model(**inputs).last_hidden_state.clone()
    state = _state(model)
    with pytest.raises(RuntimeError, match="boom"):
        with EncoderDecoderProbe(model, tokenizer) as p, torch.no_grad():
            model(**inputs)
            raise RuntimeError("boom")
    assert len(p.captures) == 1
    with EncoderDecoderProbe(model, tokenizer) as p, torch.no_grad():
        model(**inputs)
    assert _state(model) == state
    assert "probe_encdec" not in AttentionInterface._global_mapping
    with torch.no_grad():
        after = model(**inputs).last_hidden_state
    assert torch.equal(before, after)


def test_attention_probe_refuses_and_names_the_new_class(family):
    with pytest.raises(UnsupportedModelError, match="encoder-decoder.*EncoderDecoderProbe"):
        AttentionProbe(tiny(family))
    with pytest.raises(UnsupportedModelError, match="not an encoder-decoder.*AttentionProbe"):
        EncoderDecoderProbe(T.AutoModel.from_config(T.BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
            intermediate_size=37)))


def test_writing_to_a_run_file_is_refused_clearly(tokenizer, tmp_path):
    from probe.readers import records_from_texts
    from probe.runner import capture_to_file

    out = tmp_path / "run.h5"
    with EncoderDecoderProbe(tiny("bart"), tokenizer) as p:
        with pytest.raises(UnsupportedModelError, match="HDF5 run file is not supported yet"):
            p.run(SENTENCES[:1], out=out)
        with pytest.raises(UnsupportedModelError, match="has no run_to_file"):
            p.run_to_file(SENTENCES[:1], out)
        with pytest.raises(ProbeError, match="not supported yet"):
            capture_to_file(p, lambda: iter(list(records_from_texts(SENTENCES[:1], None, None))),
                            out)
    assert not out.exists()


def test_keys_build_and_parse_in_both_forms():
    for stack, site in ((None, "attn"), ("encoder", "attn"), ("decoder", "attn"),
                        ("decoder", "cross_attn")):
        for component in names.COMPONENTS:
            k = names.key(4, component, stack=stack, site=site)
            parts = names.parse_key(k)
            assert parts == (4, component) and (parts.stack, parts.site) == (stack, site)
            assert names.sibling(k, "pattern") == names.key(4, "pattern", stack=stack, site=site)
    assert names.key(3, "pattern") == "blocks.3.attn.pattern"
    parts = pickle.loads(pickle.dumps(names.parse_key("decoder.blocks.2.cross_attn.z")))
    assert parts == (2, "z") and (parts.stack, parts.site) == ("decoder", "cross_attn")
    assert names.axes("decoder.blocks.0.cross_attn.pattern") == ("head", "query", "source")
    assert names.axes("decoder.blocks.0.cross_attn.value_norm") == ("head", "source")
    assert names.axes("decoder.blocks.0.cross_attn.q") == ("head", "token", "d_head")
    assert names.axes("encoder.blocks.0.attn.pattern") == names.AXES["pattern"]
    for bad in ("encoder.blocks.0.cross_attn.pattern", "blocks.0.cross_attn.pattern",
                "middle.blocks.0.attn.q", "decoder.blocks.x.attn.q", "decoder.blocks.0.attn.nope"):
        with pytest.raises(InputError, match="not a capture key"):
            names.parse_key(bad)
    with pytest.raises(InputError, match="only in the decoder"):
        names.key(0, "q", stack="encoder", site="cross_attn")


def test_a_decoder_step_with_a_cache_is_refused_clearly():
    model = tiny("bart")
    ids = torch.tensor([[101, 2000, 2001, 102]])
    dec = torch.tensor([[102, 2000, 2001]])
    with EncoderDecoderProbe(model) as p, torch.no_grad():
        out = model(input_ids=ids, decoder_input_ids=dec[:, :2], use_cache=True)
        assert len(p.captures) == 1
        name = "cache" if "cache" in out else "past_key_values"  # renamed within 5.x
        with pytest.raises(ProbeError, match=r"decoder\.blocks\.0\.attn: 1 queries against 3 keys"
                                             r".*use_cache=False and without a cache \(cache="):
            model(encoder_outputs=(out.encoder_last_hidden_state,), decoder_input_ids=dec[:, 2:],
                  use_cache=True, **{name: out[name]})
