"""Shared fixtures: tiny randomly initialised models (one per supported family) and the
bundled MiniLM. Tiny models use the bundled BERT tokenizer's vocabulary so that
``AttentionProbe.run`` can tokenise real sentences for every architecture.

The suite has three layers, one folder each: ``unit`` (pure functions and tiny in-memory
models; the quick run, about a minute), ``integration`` (files, CLI subprocesses, crashes,
sweeps) and ``acceptance`` (the real MiniLM end to end, calibration, README blocks, the
browser). Tests under integration/ and acceptance/ get the ``slow`` marker here.
"""

from __future__ import annotations

import functools
import random
import sys
from pathlib import Path

import pytest
import torch
import transformers as T

VOCAB = 30522  # the bundled BERT tokenizer's vocabulary

# name -> (config factory, is_causal, sliding_window)
ARCHS = {
    "bert": (lambda: T.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=37,
                                  max_position_embeddings=64), False, None),
    "roberta": (lambda: T.RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=37,
                                        max_position_embeddings=66, pad_token_id=0), False, None),
    "xlm-roberta": (lambda: T.XLMRobertaConfig(vocab_size=VOCAB, hidden_size=24, num_hidden_layers=2,
                                               num_attention_heads=3, intermediate_size=37,
                                               max_position_embeddings=66, pad_token_id=0), False, None),
    "electra": (lambda: T.ElectraConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=32,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=37, max_position_embeddings=64), False, None),
    "distilbert": (lambda: T.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                                              hidden_dim=37, max_position_embeddings=64), False, None),
    "gpt2": (lambda: T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                  bos_token_id=101, eos_token_id=102), True, None),
    "gpt_neox": (lambda: T.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=37,
                                         max_position_embeddings=64, rotary_pct=0.5,
                                         bos_token_id=101, eos_token_id=102), True, None),
    "llama": (lambda: T.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, intermediate_size=37,
                                    max_position_embeddings=64, bos_token_id=101, eos_token_id=102,
                                    pad_token_id=0), True, None),
    "mistral": (lambda: T.MistralConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=1,
                                        intermediate_size=37, max_position_embeddings=64,
                                        sliding_window=4, bos_token_id=101, eos_token_id=102,
                                        pad_token_id=0), True, 4),
    "qwen2": (lambda: T.Qwen2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, intermediate_size=37,
                                    max_position_embeddings=64, bos_token_id=101, eos_token_id=102,
                                    pad_token_id=0), True, None),
    "qwen3": (lambda: T.Qwen3Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                    intermediate_size=37, max_position_embeddings=64,
                                    bos_token_id=101, eos_token_id=102, pad_token_id=0), True, None),
    # found by generic detection (no table entry): fused qkv + sliding window, q/k norm, MoE MLPs
    "phi3": (lambda: T.Phi3Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=37,
                                  max_position_embeddings=64, sliding_window=4, bos_token_id=101,
                                  eos_token_id=102, pad_token_id=0), True, 4),
    "olmo2": (lambda: T.Olmo2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, intermediate_size=37,
                                    max_position_embeddings=64, bos_token_id=101, eos_token_id=102,
                                    pad_token_id=0), True, None),
    # MoE expert kernels need 16-byte aligned strides: intermediate sizes are multiples of 4
    "mixtral": (lambda: T.MixtralConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        intermediate_size=32, num_local_experts=2,
                                        num_experts_per_tok=1, max_position_embeddings=64,
                                        sliding_window=4, bos_token_id=101, eos_token_id=102,
                                        pad_token_id=0), True, 4),
    "qwen3_moe": (lambda: T.Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                           intermediate_size=32, moe_intermediate_size=16,
                                           num_experts=2, num_experts_per_tok=1,
                                           max_position_embeddings=64, bos_token_id=101,
                                           eos_token_id=102, pad_token_id=0), True, None),
    "gptj": (lambda: T.GPTJConfig(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                  rotary_dim=4, bos_token_id=101, eos_token_id=102), True, None),
}

# the output projection of layer l, named independently of probe's own table
OUT_PROJ = {
    "bert": "encoder.layer.{l}.attention.output.dense",
    "roberta": "encoder.layer.{l}.attention.output.dense",
    "xlm-roberta": "encoder.layer.{l}.attention.output.dense",
    "electra": "encoder.layer.{l}.attention.output.dense",
    "distilbert": "transformer.layer.{l}.attention.out_lin",
    "gpt2": "h.{l}.attn.c_proj",
    "gpt_neox": "layers.{l}.attention.dense",
    "llama": "layers.{l}.self_attn.o_proj",
    "mistral": "layers.{l}.self_attn.o_proj",
    "qwen2": "layers.{l}.self_attn.o_proj",
    "qwen3": "layers.{l}.self_attn.o_proj",
    "phi3": "layers.{l}.self_attn.o_proj",
    "olmo2": "layers.{l}.self_attn.o_proj",
    "mixtral": "layers.{l}.self_attn.o_proj",
    "qwen3_moe": "layers.{l}.self_attn.o_proj",
    "gptj": "h.{l}.attn.out_proj",
}


@functools.lru_cache(maxsize=None)
def _tiny(arch: str):
    torch.manual_seed(1234)
    config = ARCHS[arch][0]()
    model = T.AutoModel.from_config(config).eval()
    # random init is small; widen weights so attention patterns are far from uniform
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name and "wte" not in name and "wpe" not in name:
                p.mul_(3.0)
    return model


@pytest.fixture(params=sorted(ARCHS))
def arch(request):
    return request.param


@pytest.fixture
def tiny(arch):
    return _tiny(arch)


@functools.lru_cache(maxsize=None)
def _minilm():
    from probe import load_model

    return load_model()


@pytest.fixture(scope="session")
def minilm():
    return _minilm()


@pytest.fixture(scope="session")
def tokenizer():
    return _minilm()[1]


SENTENCES = [
    "A robin is a bird.",
    "A robin is not a bird.",
    "Penguins can't fly, but they swim remarkably well in very cold water.",
    "No.",
    "The committee never approved the new budget for the northern district schools.",
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny BERT saved with the bundled tokenizer: a local model folder for CLI subprocesses."""
    path = tmp_path_factory.mktemp("tiny-bert")
    _tiny("bert").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def eager_reference(model, ids, mask):
    """Hidden states and attentions from transformers' own eager implementation (the
    independent reference of the parity tests)."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    finally:
        model.set_attn_implementation(before)
    return out.last_hidden_state, out.attentions


_SLOW_LAYERS = ("integration", "acceptance")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).parent.name in _SLOW_LAYERS:
            item.add_marker(pytest.mark.slow)


def random_sentences(n, seed=0):
    """``n`` sentences of 3-30 random words, the same for the same seed."""
    rng = random.Random(seed)
    words = ("the a robin bird is not never no can cannot river old city bridge red painted "
             "quickly under over with children teacher garden".split())
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 30))).capitalize() + "."
            for _ in range(n)]


def capture_command(src, out, model_dir, *extra):
    """The `probe capture` subprocess command the crash, disk-full and signal tests run."""
    return [sys.executable, "-m", "probe.cli", "capture", str(src), "--out", str(out), "--model",
            str(model_dir), "--batch-size", "8", "--window", "64", "--quiet", *extra]


def flip_byte_in_chunk(path, name, chunk=0, *, holding=None):
    """Damage the run file ``path`` on disk: flip one byte in the middle of stored chunk
    ``chunk`` of dataset ``name``, or of the chunk holding element ``holding`` (what the
    checksum tests must catch). Opens the file as an SWMR reader, so a killed writer's file
    can be damaged too."""
    import h5py

    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        ds = f[name]
        info = (ds.id.get_chunk_info(chunk) if holding is None else
                ds.id.get_chunk_info_by_coord((holding - holding % ds.chunks[0],)))
        offset = info.byte_offset + info.size // 2
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x5A]))
