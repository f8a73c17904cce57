"""The probe leaves no trace: hooks, attention implementation, registries and outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from conftest import SENTENCES, VOCAB
from probe import AttentionProbe, InputError, ProbeError, UnsupportedModelError
from probe.capture import BACKEND
from probe.inputs import pad

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
              "_forward_hooks_always_called", "_state_dict_hooks", "_load_state_dict_pre_hooks")


def hook_snapshot(model):
    return {(name, d): tuple(getattr(m, d, {}).items())
            for name, m in model.named_modules() for d in HOOK_DICTS}


def _inputs(tokenizer):
    return pad([tokenizer(t)["input_ids"] for t in SENTENCES], 0, "cpu")


def _outputs(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state.clone()


def test_exit_restores_model_exactly(tiny, tokenizer):
    ids, mask = _inputs(tokenizer)
    # transformers installs hooks of its own on first use of output_attentions: trigger them
    with torch.no_grad():
        tiny(input_ids=ids, attention_mask=mask, output_attentions=True)
    before_hooks = hook_snapshot(tiny)
    before_impl = tiny.config._attn_implementation
    before_out = _outputs(tiny, ids, mask)
    with AttentionProbe(tiny, tokenizer) as p:
        assert tiny.config._attn_implementation == BACKEND
        assert BACKEND in AttentionMaskInterface._global_mapping  # masks must not vanish
        p.run(SENTENCES[:2])
        assert hook_snapshot(tiny) != before_hooks
    assert hook_snapshot(tiny) == before_hooks
    assert tiny.config._attn_implementation == before_impl
    assert BACKEND not in AttentionInterface._global_mapping
    assert BACKEND not in AttentionMaskInterface._global_mapping
    assert torch.equal(_outputs(tiny, ids, mask), before_out)


def test_exit_through_exception_restores_model(tiny, tokenizer):
    ids, mask = _inputs(tokenizer)
    before_hooks = hook_snapshot(tiny)
    before_out = _outputs(tiny, ids, mask)
    with pytest.raises(RuntimeError, match="boom"):
        with AttentionProbe(tiny, tokenizer):
            _outputs(tiny, ids, mask)
            raise RuntimeError("boom")
    assert hook_snapshot(tiny) == before_hooks
    assert tiny.config._attn_implementation == "sdpa"
    assert torch.equal(_outputs(tiny, ids, mask), before_out)


def test_probe_keeps_eager_or_sdpa_choice(minilm):
    model, tokenizer = minilm
    model.set_attn_implementation("eager")
    try:
        with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
            p.run(["A dog barks."])
        assert model.config._attn_implementation == "eager"
    finally:
        model.set_attn_implementation("sdpa")


def test_output_attentions_still_works_inside_the_probe(minilm):
    model, tokenizer = minilm
    ids, mask = _inputs(tokenizer)
    with AttentionProbe(model, tokenizer, keys=["pattern"]) as p, torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert len(out.attentions) == 6
    np.testing.assert_array_equal(out.attentions[2][1, :, :9, :9].numpy(),
                                  p.last[1]["blocks.2.attn.pattern"])


def test_one_probe_per_model_and_nesting_refused(tiny, tokenizer):
    with AttentionProbe(tiny, tokenizer):
        with pytest.raises(ProbeError, match="already attached"):
            AttentionProbe(tiny, tokenizer).attach()
    assert tiny.config._attn_implementation == "sdpa"


def test_two_models_probed_at_once(minilm):
    from conftest import _tiny

    model, tokenizer = minilm
    other = _tiny("bert")
    with AttentionProbe(model, tokenizer, keys=["pattern"]) as a, \
            AttentionProbe(other, tokenizer, keys=["pattern"]) as b:
        ca, cb = a.run(["A cat."]), b.run(["A cat."])
    assert ca[0]["blocks.5.attn.pattern"].shape == (12, 5, 5)
    assert cb[0]["blocks.1.attn.pattern"].shape == (4, 5, 5)
    assert BACKEND not in AttentionInterface._global_mapping


def test_selection_of_layers_and_keys(minilm):
    model, tokenizer = minilm
    with AttentionProbe(model, tokenizer, layers=[0, -1], keys=["pattern", "value_weighted"]) as p:
        cap = p.run(["A robin is a bird."])
    assert cap.keys == ("blocks.0.attn.pattern", "blocks.0.attn.value_weighted",
                        "blocks.5.attn.pattern", "blocks.5.attn.value_weighted")
    ex = cap[0]
    assert "blocks.0.attn.value_norm" not in ex
    with pytest.raises(KeyError, match="not captured"):
        ex["blocks.1.attn.pattern"]
    with AttentionProbe(model, tokenizer, keys=["blocks.2.attn.q", "blocks.4.attn.z"]) as p:
        cap = p.run(["A robin is a bird."])
    assert cap.keys == ("blocks.2.attn.q", "blocks.4.attn.z")
    only = cap.select(components=["q"])
    assert only.keys == ("blocks.2.attn.q",)
    with pytest.raises(InputError, match="not in this capture"):
        cap.select(layers=[0])


def test_bad_selection_messages(minilm):
    model, tokenizer = minilm
    with pytest.raises(InputError, match="layers 0..5"):
        AttentionProbe(model, tokenizer, layers=[6])
    with pytest.raises(InputError, match="unknown component 'attn'"):
        AttentionProbe(model, tokenizer, keys=["attn"])
    with pytest.raises(InputError, match="not a capture key"):
        AttentionProbe(model, tokenizer, keys=["blocks.x.attn.q"])


def test_unsupported_architecture_is_named():
    config = T.DebertaV2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=37)
    model = T.AutoModel.from_config(config)
    with pytest.raises(UnsupportedModelError) as err:
        AttentionProbe(model)
    assert "deberta-v2" in str(err.value) and "Llama" in str(err.value) and "GPT-2" in str(err.value)


def test_input_errors(minilm):
    model, tokenizer = minilm
    with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
        with pytest.raises(InputError, match="example #1: the text is empty"):
            p.run(["A fine sentence.", "   "])
        long_text = "word " * 600
        with pytest.raises(InputError, match=r"example #0 is \d+ tokens long.*maximum of 512"):
            p.run([long_text])
        cap = p.run([long_text], truncate=True)
        assert len(cap[0].tokens) == 512 and cap[0].tokens[-1] == "[SEP]"
        assert cap[0].meta["truncated"] is True
        with pytest.raises(InputError, match="batch_size must be a whole number of at least 1"):
            p.run(["A sentence."], batch_size=0)
    with pytest.raises(ProbeError, match="attached"):
        AttentionProbe(model, tokenizer).run(["A sentence."])


def test_kv_cache_is_refused_clearly():
    from conftest import _tiny

    model = _tiny("llama")
    ids = torch.tensor([[101, 2000, 2001, 2002]])
    with AttentionProbe(model) as p, torch.no_grad():
        out = model(input_ids=ids[:, :3], use_cache=True)
        assert len(p.captures) == 1
        with pytest.raises(ProbeError, match=r"use_cache=False and without a cache \(cache="):
            name = "cache" if "cache" in out else "past_key_values"  # renamed within 5.x
            model(input_ids=ids[:, 3:], use_cache=True, **{name: out[name]})


def test_captures_accumulate_per_forward_and_clear(minilm):
    model, tokenizer = minilm
    ids, mask = _inputs(tokenizer)
    with AttentionProbe(model, tokenizer, keys=["pattern"]) as p, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        model(input_ids=ids[:2], attention_mask=mask[:2])
        assert [len(c) for c in p.captures] == [5, 2]
        assert p.last[1].tokens == tokenizer.convert_ids_to_tokens(tokenizer(SENTENCES[1])["input_ids"])
        p.clear()
        with pytest.raises(ProbeError, match="nothing captured"):
            p.last


def test_capture_ids_is_one_forward_equal_to_the_model_called_directly(minilm):
    model, tokenizer = minilm
    ids, mask = _inputs(tokenizer)
    rows = [tokenizer(t)["input_ids"] for t in SENTENCES]
    with AttentionProbe(model, tokenizer, keys=["pattern", "value_norm"]) as p, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        direct = p.last
        cap = p.capture_ids(rows)
        assert len(p.captures) == 1  # capture_ids keeps nothing in p.captures
        with pytest.raises(InputError, match="at least one row"):
            p.capture_ids([])
    assert len(cap) == len(SENTENCES) and cap.keys == direct.keys
    assert cap.batch.spans == [(0, len(r)) for r in rows]
    for i, row in enumerate(rows):
        assert cap[i].tokens == tokenizer.convert_ids_to_tokens(row)
        assert list(cap[i].input_ids) == row
        for key in cap.keys:
            assert np.array_equal(cap[i][key], direct[i][key])
    with pytest.raises(ProbeError, match=r"capture_ids\(\) needs an attached probe"):
        p.capture_ids(rows)


def test_run_returns_a_capture_and_refuses_out_naming_run_to_file(minilm, tmp_path):
    from probe import Capture, Run

    model, tokenizer = minilm
    out = tmp_path / "run.h5"
    with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
        with pytest.raises(InputError, match=r"takes no out=.*run_to_file\(texts, out"):
            p.run(SENTENCES[:2], out=out)
        with pytest.raises(InputError, match="belong to run_to_file"):
            p.run(SENTENCES[:2], dtype="float16")
        assert not out.exists()
        live = p.run(SENTENCES[:2], out=None)  # out=None still means in memory
        assert isinstance(live, Capture)
        with p.run_to_file(SENTENCES[:2], out, meta=[{"n": 0}, {"n": 1}]) as run:
            assert isinstance(run, Run) and run.complete and len(run) == 2
            assert [ex.meta["n"] for ex in run] == [0, 1]
            for i in range(2):
                assert np.array_equal(run[i]["blocks.2.attn.pattern"], live[i]["blocks.2.attn.pattern"])
                assert run[i].text == live[i].text == SENTENCES[i]
    with pytest.raises(ProbeError, match=r"run_to_file\(\) needs an attached probe"):
        p.run_to_file(SENTENCES[:2], tmp_path / "other.h5")


def test_one_registry_serves_both_probes(tokenizer):
    from conftest import _tiny

    from probe import EncoderDecoderProbe
    from probe.backends import REGISTRY
    from probe.encdec import BACKEND as ENCDEC

    bert = _tiny("bert")
    bart = T.BartModel(T.BartConfig(vocab_size=VOCAB, d_model=16, encoder_layers=1,
                                    decoder_layers=1, encoder_attention_heads=2,
                                    decoder_attention_heads=2, encoder_ffn_dim=16,
                                    decoder_ffn_dim=16, max_position_embeddings=64)).eval()
    with AttentionProbe(bert) as a, EncoderDecoderProbe(bart) as b:
        assert REGISTRY.users(BACKEND) == REGISTRY.users(ENCDEC) == 1
        assert REGISTRY.attached(bert) and REGISTRY.attached(bart)
        with pytest.raises(ProbeError, match="already attached"):
            AttentionProbe(bert).attach()
        assert REGISTRY.entry(a.layers[0].module)[0] is a
        assert REGISTRY.entry(b.layers.sites()[0][2][0].module)[0] is b
    assert REGISTRY.users(BACKEND) == REGISTRY.users(ENCDEC) == 0
    assert not REGISTRY.attached(bert) and not REGISTRY.attached(bart)
    assert BACKEND not in AttentionInterface._global_mapping
    assert ENCDEC not in AttentionInterface._global_mapping
