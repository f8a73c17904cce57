"""The tiny models of the families that break an assumption of ``conftest.ARCHS`` (scaling
other than d_head**-0.5, soft-capping, sinks, per-layer windows, one module serving several
layers), shared by tests/unit/test_families.py and tests/integration/test_check_model_cli.py."""

from __future__ import annotations

import functools

import torch
import transformers as T

from conftest import ARCHS, OUT_PROJ, SENTENCES, VOCAB, _tiny
from probe.inputs import pad

_DEC = dict(bos_token_id=101, eos_token_id=102, pad_token_id=0)
_SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=64)
_GEMMA = dict(_SMALL, num_key_value_heads=2, head_dim=8, intermediate_size=32, sliding_window=4,
              query_pre_attn_scalar=12, **_DEC)


def _gemma3_multimodal():
    vision = T.SiglipVisionConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, image_size=16, patch_size=8)
    text = dict(_GEMMA, layer_types=["sliding_attention", "full_attention"])
    return T.Gemma3Config(text_config=text, vision_config=vision.to_dict(), mm_tokens_per_image=4,
                          image_token_index=30000, boi_token_index=30001, eoi_token_index=30002)


# name -> (config factory, output projection of layer l, independent of probe's detection)
SPECIAL = {
    # tanh soft-capping (a small cap, so that it bites), query_pre_attn_scalar, alternating windows
    "gemma2": (lambda: T.Gemma2Config(**_GEMMA, attn_logit_softcapping=0.5),
               "layers.{l}.self_attn.o_proj"),
    "gemma3_text": (lambda: T.Gemma3TextConfig(**_GEMMA, layer_types=["sliding_attention",
                                                                      "full_attention"]),
                    "layers.{l}.self_attn.o_proj"),
    # the text model nested under model.language_model, next to a SigLIP vision tower
    "gemma3": (_gemma3_multimodal, "language_model.layers.{l}.self_attn.o_proj"),
    # learned sinks; sliding then full layers; MoE MLP
    "gpt_oss": (lambda: T.GptOssConfig(**_SMALL, **_DEC, num_key_value_heads=2, head_dim=8,
                                       intermediate_size=32, sliding_window=4, num_local_experts=2,
                                       num_experts_per_tok=1,
                                       layer_types=["sliding_attention", "full_attention"]),
                "layers.{l}.self_attn.o_proj"),
    # the query is scaled before the attention function, which gets scaling=1.0
    "opt": (lambda: T.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, ffn_dim=37, max_position_embeddings=64,
                                word_embed_proj_dim=32, **_DEC),
            "decoder.layers.{l}.self_attn.out_proj"),
    # one set of weights shared by all three layers
    "albert": (lambda: T.AlbertConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=32,
                                      num_hidden_layers=3, num_attention_heads=4,
                                      intermediate_size=37, max_position_embeddings=64),
               "encoder.albert_layer_groups.0.albert_layers.0.attention.dense"),
    # bidirectional, global / local (sliding window) / global layers, fused Wqkv
    "modernbert": (lambda: T.ModernBertConfig(**dict(_SMALL, num_hidden_layers=3),
                                              intermediate_size=37, pad_token_id=0,
                                              bos_token_id=101, eos_token_id=102,
                                              cls_token_id=101, sep_token_id=102,
                                              global_attn_every_n_layers=2, local_attention=4),
                   "layers.{l}.attn.Wo"),
}
FAMILIES = sorted(ARCHS) + sorted(SPECIAL)


@functools.lru_cache(maxsize=None)
def tiny_model(name: str):
    """The tiny model of ``name`` (weights widened x3 like conftest's, for peaked patterns)."""
    if name in ARCHS:
        return _tiny(name)
    torch.manual_seed(1234)
    model = T.AutoModel.from_config(SPECIAL[name][0]()).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in pname:
                p.mul_(3.0)
    return model


def out_proj_name(name: str, layer: int) -> str:
    return (OUT_PROJ[name] if name in ARCHS else SPECIAL[name][1]).format(l=layer)


def batch(tokenizer, texts=SENTENCES):
    """``texts`` tokenised and right-padded with id 0: ``(input_ids, attention_mask)``."""
    return pad([tokenizer(t)["input_ids"] for t in texts], 0, "cpu")
