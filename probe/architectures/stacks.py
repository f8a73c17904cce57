"""The attention layers of a whole model: the one stack of a single-stack model
(:func:`attention_layers`, used by ``AttentionProbe``), or the encoder self-attention, decoder
self-attention and cross-attention of an encoder-decoder (:func:`encoder_decoder_layers`,
used by :class:`probe.encdec.EncoderDecoderProbe`).

Layers are numbered in module order and must number what the config says
(``num_hidden_layers``; per stack for encoder-decoders). In a multimodal model only the
``language_model`` is searched. In a decoder, attention modules named like a cross-attention
(:data:`CROSS_NAMES`) form the third list. :func:`attention_layers` refuses encoder-decoders
and names the class that captures them.

One job: choose where to search, apply the family's layer order, check the counts. Imports
torch, ``probe.errors`` and the package's ``families``, ``detection`` and ``layer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..errors import UnsupportedModelError
from .detection import find
from .families import family_of
from .layer import AttentionLayer, as_layers

#: eager parameters that only the encoder-decoder backend (probe.encdec) reproduces
_ENCDEC_EAGER_PARAMS = frozenset({"position_bias"})
#: attribute names of a decoder block's cross-attention module (T5, BART/Whisper, BERT-style)
CROSS_NAMES: tuple[str, ...] = ("EncDecAttention", "encoder_attn", "crossattention", "cross_attn")


def _text_root(model: nn.Module) -> tuple[str, nn.Module]:
    """The language model inside a multimodal model (shortest ``*language_model`` name)."""
    best = None
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("language_model", "text_model"):
            if best is None or name.count(".") < best[0].count("."):
                best = (name, module)
    return best if best is not None else ("", model)


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
    found = find(model, root_name, root, what)
    family = family_of(model_type)
    if family is not None and family.layers is not None:
        found = family.layers(model, found)
    layers = as_layers(model, found)
    _check_count(what, layers, _n_layers(model), "")
    return layers


def _check_count(what: str, layers, expected, where: str) -> None:
    if expected is not None and len(layers) != expected:
        raise UnsupportedModelError(
            f"{what}: found {len(layers)} {where}attention modules ({_shown(layers)}) "
            f"but the config has {expected} layers; the model does not have a layout probe can "
            "detect (add a Family entry with a `layers` function in "
            "probe/architectures/families.py)")


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
    enc = find(model, enc_name, encoder, f"{what} encoder", _ENCDEC_EAGER_PARAMS)
    dec_all = find(model, dec_name, decoder, f"{what} decoder", _ENCDEC_EAGER_PARAMS)
    cross = [item for item in dec_all if item[0].split(".")[-1] in CROSS_NAMES]
    dec = [item for item in dec_all if item[0].split(".")[-1] not in CROSS_NAMES]
    result = EncoderDecoderLayers(as_layers(model, enc), as_layers(model, dec),
                                  as_layers(model, cross), encoder, decoder)
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
