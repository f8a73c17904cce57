"""Where each layer's attention lives and its output projection, found by detection.

transformers v5 hands every attention call to the function registered under the model's
attention implementation, together with the calling module. probe therefore needs, per layer,
only that module and its output projection (W_O); head counts, head size, grouped-query layout,
rotary embeddings, scaling, soft-capping and sinks reach the attention function as tensors or
keyword arguments. Detection finds them from the module tree:

- an *attention module* has query/key/value projections among its children (``q_proj k_proj
  v_proj``, ``query key value``, ``q_lin k_lin v_lin``, or one fused ``qkv_proj``, ``Wqkv``,
  ``c_attn``, ``query_key_value``) and its class calls ``ALL_ATTENTION_FUNCTIONS``;
- its *output projection* is the first child named ``o_proj out_proj Wo o c_proj out_lin
  dense``, else the parent's ``output.dense`` (the BERT layout); a GPT-2 ``Conv1D`` is
  recognised by type (its weight is ``[in, out]``, the transpose of ``nn.Linear``'s);
- layers are numbered in module order, and must number ``config.num_hidden_layers``. In a
  multimodal model only the ``language_model`` is searched.

The explicit table :data:`FAMILIES` keeps only what detection cannot infer (ALBERT's one set of
weights shared by every layer) and the names used in reports.

Encoder-decoders (T5, BART, Whisper) are found by :func:`encoder_decoder_layers` and captured by
:class:`probe.encdec.EncoderDecoderProbe`: the same detection runs in the encoder stack and the
decoder stack, and the decoder's attention modules named like a cross-attention
(:data:`CROSS_NAMES`) form a third list. :func:`attention_layers` (used by ``AttentionProbe``)
refuses them and names that class.

>>> sorted(SUPPORTED_MODEL_TYPES)[:3]
['albert', 'bert', 'distilbert']
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import UnsupportedModelError

#: children that make a module an attention module: (query, key, value) names or a fused one
QKV_NAMES: tuple[tuple[str, str, str], ...] = (
    ("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q_lin", "k_lin", "v_lin"),
    ("query_proj", "key_proj", "value_proj"), ("q", "k", "v"),
)
FUSED_QKV_NAMES: tuple[str, ...] = ("qkv_proj", "Wqkv", "c_attn", "query_key_value", "qkv")
#: output projection: a child of the attention module, in this order of preference
OUT_NAMES: tuple[str, ...] = ("o_proj", "out_proj", "Wo", "o", "c_proj", "out_lin", "dense")
#: output projection relative to the attention module's parent (BERT: attention.output.dense)
PARENT_OUT_NAMES: tuple[str, ...] = ("output.dense",)

#: parameters of a model's eager attention function that probe's backend reproduces
_KNOWN_EAGER_PARAMS = frozenset({"module", "query", "key", "value", "attention_mask", "scaling",
                                 "dropout", "softcap", "sliding_window", "kwargs"})
#: eager parameters that only the encoder-decoder backend (probe.encdec) reproduces
_ENCDEC_EAGER_PARAMS = frozenset({"position_bias"})
#: attribute names of a decoder block's cross-attention module (T5, BART/Whisper, BERT-style)
CROSS_NAMES: tuple[str, ...] = ("EncDecAttention", "encoder_attn", "crossattention", "cross_attn")
#: attributes of the calling module that an eager function may read without changing the math
_KNOWN_MODULE_ATTRS = frozenset({"num_key_value_groups", "training", "sinks", "config",
                                 "head_dim", "is_causal", "scaling", "layer_idx"})


@dataclass(frozen=True)
class Family:
    """A family's name in reports and what detection cannot infer about it."""

    name: str
    model_types: tuple[str, ...]
    #: the attention modules in call order, for models whose layers share modules
    layers: Callable[[nn.Module, list], list] | None = None


def _albert_layers(model: nn.Module, found: list) -> list:
    """ALBERT runs ``num_hidden_layers`` layers through ``num_hidden_groups`` shared groups."""
    config = model.config
    groups: dict[int, list] = {}
    for item in found:  # names like ...albert_layer_groups.{g}.albert_layers.{j}.attention
        match = re.search(r"albert_layer_groups\.(\d+)\.albert_layers\.(\d+)\.", item[0] + ".")
        if match is None:
            raise UnsupportedModelError(f"ALBERT: unexpected attention module {item[0]!r}")
        groups.setdefault(int(match.group(1)), []).append(item)
    n, g = config.num_hidden_layers, config.num_hidden_groups
    return [item for i in range(n) for item in groups[int(i / (n / g))]]


FAMILIES: tuple[Family, ...] = (
    Family("BERT", ("bert", "roberta", "xlm-roberta", "electra")),
    Family("ALBERT", ("albert",), layers=_albert_layers),
    Family("DistilBERT", ("distilbert",)),
    Family("ModernBERT", ("modernbert",)),
    Family("GPT-2", ("gpt2",)),
    Family("GPT-NeoX", ("gpt_neox",)),
    Family("GPT-J", ("gptj",)),
    Family("OPT", ("opt",)),
    Family("Llama", ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "olmo2",
                     "phi3")),
    Family("Gemma", ("gemma2", "gemma3_text", "gemma3")),
    Family("gpt-oss", ("gpt_oss",)),
)

#: encoder-decoders captured by probe.encdec.EncoderDecoderProbe (not by AttentionProbe)
ENCODER_DECODER_FAMILIES: tuple[Family, ...] = (
    Family("T5", ("t5",)),
    Family("BART", ("bart",)),
    Family("Whisper", ("whisper",)),
)

#: model types proven by the test suite (others may still be detected)
SUPPORTED_MODEL_TYPES: frozenset[str] = frozenset(t for f in FAMILIES for t in f.model_types)
#: encoder-decoder model types proven by tests/unit/test_encdec.py
ENCODER_DECODER_MODEL_TYPES: frozenset[str] = frozenset(
    t for f in ENCODER_DECODER_FAMILIES for t in f.model_types)

#: model types known to compute attention outside transformers' attention interface
_OUTSIDE_INTERFACE = ("deberta-v2", "deberta", "falcon", "bloom", "gpt_neo")


@dataclass(frozen=True)
class AttentionLayer:
    """One layer's attention module and its output projection."""

    index: int
    name: str
    module: nn.Module
    out_proj: nn.Module
    conv1d: bool
    #: qualified name of the output projection
    out_name: str = ""
    #: (module, name of W_O's parameter prefix relative to it) from out_proj up to the model;
    #: where an accelerate offload hook keeps the real weight
    out_chain: tuple = field(default=(), compare=False, repr=False)

    def _parameter(self, name: str) -> torch.Tensor | None:
        p = getattr(self.out_proj, name, None)
        if p is None:
            return None
        if p.device.type == "meta":
            p = _offloaded(self.out_chain, name, self.index)
        if hasattr(p, "to_local"):  # a DTensor under tensor parallelism (tp_plan)
            p = _rank_part(p, name, self.conv1d)
        return p

    def output_weight(self, device: torch.device | str | None = None) -> torch.Tensor:
        """W_O in nn.Linear layout ``[d_model, head * d_head]``, on ``device`` if given.

        Works on offloaded models: a weight on the meta device is read from accelerate's
        offload map (the weight the projection will actually use), never from the meta tensor.
        """
        w = self._parameter("weight")
        if device is not None:
            w = w.to(device)
        return w.t() if self.conv1d else w

    def output_bias(self, device: torch.device | str | None = None) -> torch.Tensor | None:
        b = self._parameter("bias")
        return b if b is None or device is None else b.to(device)


def _rank_part(p, name: str, conv1d: bool) -> torch.Tensor:
    """This rank's part of a tensor-parallel W_O: the shard of its input axis, which holds the
    columns of the heads this rank computes (row-wise parallel output projection); anything
    else (a replicated weight, the bias) is gathered whole."""
    in_dim = 0 if conv1d else 1
    if name == "weight" and any(getattr(pl, "dim", None) == in_dim for pl in p.placements):
        return p.to_local()
    return p.full_tensor()


def _offloaded(chain, name: str, index: int) -> torch.Tensor:
    """A meta parameter's real value from the accelerate hook that will load it."""
    for module, prefix in chain:
        hook = getattr(module, "_hf_hook", None)
        for h in getattr(hook, "hooks", (hook,)):
            weights = getattr(h, "weights_map", None)
            if weights is None:
                continue
            try:
                return weights[f"{prefix}{name}"]
            except KeyError:
                continue
    raise UnsupportedModelError(
        f"layer {index}: the output projection's {name} is on the meta device and no accelerate "
        "offload hook holds its value; load the model with real weights (or with device_map "
        "offloading, whose hooks probe reads)"
    )


def supported_families() -> str:
    """A readable list of tested families and model types, for error messages."""
    return "; ".join(f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES)


def family_name(model: nn.Module) -> str:
    """The family's report name, or ``"detected (<model_type>)"`` for an untabled model."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for family in FAMILIES + ENCODER_DECODER_FAMILIES:
        if model_type in family.model_types:
            return family.name
    return f"detected ({model_type})"


def _family(model_type) -> Family | None:
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def _text_root(model: nn.Module) -> tuple[str, nn.Module]:
    """The language model inside a multimodal model (shortest ``*language_model`` name)."""
    best = None
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("language_model", "text_model"):
            if best is None or name.count(".") < best[0].count("."):
                best = (name, module)
    return best if best is not None else ("", model)


def _projections(module: nn.Module) -> str | None:
    children = module._modules
    for names in QKV_NAMES:
        if all(children.get(n) is not None for n in names):
            return "/".join(names)
    for fused in FUSED_QKV_NAMES:
        if children.get(fused) is not None:
            return fused
    return None


def _class_source(cls) -> str | None:
    parts = []
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            break
        try:
            parts.append(inspect.getsource(klass))
        except (OSError, TypeError):
            return None
    return "\n".join(parts)


def _uses_interface(module: nn.Module) -> bool:
    source = _class_source(type(module))
    return source is None or "ALL_ATTENTION_FUNCTIONS" in source


def _eager_surprise(module: nn.Module, modelled: frozenset = frozenset()) -> str | None:
    """Why the model's own eager attention differs from probe's backend, if it visibly does
    (``modelled``: extra eager parameters the calling backend reproduces)."""
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        return None
    try:
        params = set(inspect.signature(eager).parameters)
        source = inspect.getsource(eager)
    except (OSError, TypeError, ValueError):
        return None
    extra = sorted(params - _KNOWN_EAGER_PARAMS - modelled)
    if extra:
        return f"its eager attention takes {', '.join(extra)}, which probe does not model"
    attrs = sorted(set(re.findall(r"\bmodule\.(\w+)", source)) - _KNOWN_MODULE_ATTRS)
    if attrs:
        return (f"its eager attention reads module.{', module.'.join(attrs)}, which probe does "
                "not model")
    return None


def _out_projection(model: nn.Module, name: str, module: nn.Module) -> str | None:
    for child in OUT_NAMES:
        if module._modules.get(child) is not None:
            return f"{name}.{child}" if name else child
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    for path in PARENT_OUT_NAMES:
        full = f"{parent}.{path}" if parent else path
        try:
            model.get_submodule(full)
        except AttributeError:
            continue
        return full
    return None


def _chain(model: nn.Module, out_name: str) -> tuple:
    parts = out_name.split(".")
    chain = []
    for i in range(len(parts), -1, -1):
        path = ".".join(parts[:i])
        rest = ".".join(parts[i:])
        chain.append((model.get_submodule(path) if path else model, f"{rest}." if rest else ""))
    return tuple(chain)


def _shown(layers) -> str:
    names = ", ".join(repr(layer.name) for layer in layers[:4])
    return names + (", ..." if len(layers) > 4 else "")


def _n_layers(model: nn.Module) -> int | None:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "num_hidden_layers", None)


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """Every self-attention layer of ``model`` in order, with its output projection.

    Raises :class:`UnsupportedModelError` naming the part that was not found: no attention
    module, attention computed outside transformers' interface, no output projection, an
    eager variant probe does not model, or a layer count that does not match the config.
    Encoder-decoders are refused with a pointer to :class:`probe.encdec.EncoderDecoderProbe`.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    what = f"{type(model).__name__} (model_type={model_type!r})"
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"{what} is an encoder-decoder; AttentionProbe captures single-stack models only. "
            "Use probe.encdec.EncoderDecoderProbe(model, tokenizer) for its encoder "
            "self-attention, decoder self-attention and cross-attention (in memory; writing "
            "encoder-decoder runs to HDF5 is not supported yet)")
    root_name, root = _text_root(model)
    found = _find(model, root_name, root, what)
    family = _family(model_type)
    if family is not None and family.layers is not None:
        found = family.layers(model, found)
    layers = _as_layers(model, found)
    _check_count(what, layers, _n_layers(model), "")
    return layers


def _find(model: nn.Module, root_name: str, root: nn.Module, what: str,
          modelled: frozenset = frozenset()) -> list[tuple[str, nn.Module, str]]:
    """(name, attention module, output projection name) of every attention module under
    ``root``, in module order; raises naming what was not found."""
    found, outside, no_out, surprises = [], [], [], []
    for rel, module in root.named_modules():
        qkv = _projections(module)
        if qkv is None:
            continue
        name = f"{root_name}.{rel}" if root_name and rel else (rel or root_name)
        if not _uses_interface(module):
            outside.append(f"{type(module).__name__} at {name!r}")
            continue
        out_name = _out_projection(model, name, module)
        if out_name is None:
            no_out.append(f"{type(module).__name__} at {name!r} ({qkv})")
            continue
        surprise = _eager_surprise(module, modelled)
        if surprise is not None:
            surprises.append(f"{type(module).__name__}: {surprise}")
            continue
        found.append((name, module, out_name))
    if not found:
        if surprises:
            raise UnsupportedModelError(
                f"{what}: {surprises[0]}; its captures would not equal the model's attention")
        if outside:
            raise UnsupportedModelError(
                f"{what}: its attention ({outside[0]}) computes attention itself instead of "
                "calling transformers' attention interface (ALL_ATTENTION_FUNCTIONS), so "
                "probe's backend never sees it. Models known to do this: "
                f"{', '.join(_OUTSIDE_INTERFACE)}. Tested families: {supported_families()}")
        if no_out:
            raise UnsupportedModelError(
                f"{what}: found attention modules ({no_out[0]}) but no output projection: "
                f"looked for a child named {', '.join(OUT_NAMES)} or the parent's "
                f"{', '.join(PARENT_OUT_NAMES)}")
        raise UnsupportedModelError(
            f"{what}: found no attention module: no submodule has query/key/value projections "
            f"named {', '.join('/'.join(n) for n in QKV_NAMES)} or a fused projection named "
            f"{', '.join(FUSED_QKV_NAMES)}. Tested families: {supported_families()}")
    return found


def _as_layers(model: nn.Module, found) -> list[AttentionLayer]:
    layers = []
    for index, (name, module, out_name) in enumerate(found):
        out_proj = model.get_submodule(out_name)
        conv1d = type(out_proj).__name__ == "Conv1D"
        layers.append(AttentionLayer(index, name, module, out_proj, conv1d, out_name,
                                     _chain(model, out_name)))
    return layers


def _check_count(what: str, layers, expected, where: str) -> None:
    if expected is not None and len(layers) != expected:
        raise UnsupportedModelError(
            f"{what}: found {len(layers)} {where}attention modules ({_shown(layers)}) "
            f"but the config has {expected} layers; the model does not have a layout probe can "
            "detect (add a Family entry with a `layers` function in probe/architectures.py)")


@dataclass(frozen=True)
class EncoderDecoderLayers:
    """The attention layers of an encoder-decoder: encoder self-attention, decoder
    self-attention and decoder cross-attention, each numbered from 0 in module order."""

    encoder: list[AttentionLayer]
    decoder: list[AttentionLayer]
    cross: list[AttentionLayer]
    #: the encoder and decoder stack modules (where their inputs and padding masks arrive)
    encoder_stack: nn.Module | None = field(default=None, compare=False, repr=False)
    decoder_stack: nn.Module | None = field(default=None, compare=False, repr=False)

    def sites(self):
        """``(stack, site, layers)`` for each of the three kinds, in key order."""
        return (("encoder", "attn", self.encoder), ("decoder", "attn", self.decoder),
                ("decoder", "cross_attn", self.cross))


def _stack(model: nn.Module, which: str, what: str) -> tuple[str, nn.Module]:
    """The shallowest submodule named ``which`` ("encoder" or "decoder")."""
    best = None
    for name, module in model.named_modules():
        if name.split(".")[-1] == which and (best is None or name.count(".") < best[0].count(".")):
            best = (name, module)
    if best is None:
        raise UnsupportedModelError(
            f"{what}: is_encoder_decoder is set but no submodule is named {which!r}; probe finds "
            "the two stacks by those names")
    return best


def _config_count(config, names_) -> int | None:
    for name in names_:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def encoder_decoder_layers(model: nn.Module) -> EncoderDecoderLayers:
    """The encoder's self-attention layers, the decoder's self-attention layers and the
    decoder's cross-attention layers of an encoder-decoder (T5, BART, Whisper), each with its
    output projection.

    Detection is that of :func:`attention_layers`, run in each stack; in the decoder, a module
    whose attribute name is one of :data:`CROSS_NAMES` is a cross-attention. T5's relative
    position bias (``position_bias``) is modelled by :mod:`probe.encdec`'s backend. Raises
    :class:`UnsupportedModelError` for single-stack models and for counts that differ from the
    config.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    what = f"{type(model).__name__} (model_type={model_type!r})"
    if not getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"{what} is not an encoder-decoder (config.is_encoder_decoder is not set); use "
            "probe.AttentionProbe for it")
    enc_name, encoder = _stack(model, "encoder", what)
    dec_name, decoder = _stack(model, "decoder", what)
    enc = _find(model, enc_name, encoder, f"{what} encoder", _ENCDEC_EAGER_PARAMS)
    dec_all = _find(model, dec_name, decoder, f"{what} decoder", _ENCDEC_EAGER_PARAMS)
    cross = [item for item in dec_all if item[0].split(".")[-1] in CROSS_NAMES]
    dec = [item for item in dec_all if item[0].split(".")[-1] not in CROSS_NAMES]
    result = EncoderDecoderLayers(_as_layers(model, enc), _as_layers(model, dec),
                                  _as_layers(model, cross), encoder, decoder)
    n_enc = _config_count(config, ("encoder_layers", "num_layers", "num_hidden_layers"))
    n_dec = _config_count(config, ("decoder_layers", "num_decoder_layers", "num_layers",
                                   "num_hidden_layers"))
    _check_count(what, result.encoder, n_enc, "encoder self-")
    _check_count(what, result.decoder, n_dec, "decoder self-")
    if len(result.cross) != len(result.decoder):
        raise UnsupportedModelError(
            f"{what}: found {len(result.cross)} cross-attention modules (named "
            f"{', '.join(CROSS_NAMES)}) for {len(result.decoder)} decoder self-attention "
            f"modules ({_shown(result.decoder)}); probe expects one of each per decoder block")
    return result
