"""Per-architecture facts: where each layer's attention lives and its output projection.

Everything else `probe` needs (head counts, head size, grouped-query layout, rotary
embeddings) is read from the tensors that reach the attention function, so a family is
described by two things only: a pattern for the qualified name of its attention modules (the
module transformers hands to the attention function) and the path of the output projection
(W_O) relative to that module.

>>> sorted(SUPPORTED_MODEL_TYPES)[:3]
['bert', 'distilbert', 'electra']
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class Family:
    """How to find the attention of one family of models."""

    name: str
    model_types: tuple[str, ...]
    #: regex for an attention module's name relative to the layer stack; group 1 = layer index
    attention: str
    #: output projection, relative to the attention module; a leading "^" goes to the parent
    out_proj: str
    #: GPT-2 style Conv1D projection (weight is [in, out], the transpose of nn.Linear's)
    conv1d: bool = False


FAMILIES: tuple[Family, ...] = (
    Family("BERT", ("bert", "roberta", "xlm-roberta", "electra"),
           r"layer\.(\d+)\.attention\.self", "^.output.dense"),
    Family("DistilBERT", ("distilbert",), r"layer\.(\d+)\.attention", "out_lin"),
    Family("GPT-2", ("gpt2",), r"h\.(\d+)\.attn", "c_proj", conv1d=True),
    Family("GPT-NeoX", ("gpt_neox",), r"layers\.(\d+)\.attention", "dense"),
    Family("Llama", ("llama", "mistral", "qwen2", "qwen3"), r"layers\.(\d+)\.self_attn", "o_proj"),
)

SUPPORTED_MODEL_TYPES: frozenset[str] = frozenset(t for f in FAMILIES for t in f.model_types)


@dataclass(frozen=True)
class AttentionLayer:
    """One layer's attention module and its output projection."""

    index: int
    name: str
    module: nn.Module
    out_proj: nn.Module
    conv1d: bool

    def output_weight(self) -> torch.Tensor:
        """W_O in nn.Linear layout: ``[d_model, head * d_head]``."""
        w = self.out_proj.weight
        return w.t() if self.conv1d else w

    def output_bias(self) -> torch.Tensor | None:
        return getattr(self.out_proj, "bias", None)


def supported_families() -> str:
    """A readable list of supported families and model types, for error messages."""
    return "; ".join(f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES)


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` of a transformers model, or a clear error."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise UnsupportedModelError(
        f"probe cannot capture attention of model_type={model_type!r} "
        f"({type(model).__name__}). Supported families: {supported_families()}. "
        "Use one of these, or add a Family entry in probe/architectures.py with a test "
        "against the model's eager output_attentions."
    )


def _n_layers(model: nn.Module) -> int | None:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "num_hidden_layers", None)


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """Every self-attention layer of ``model`` in order, with its output projection.

    Raises :class:`UnsupportedModelError` for an unknown family or when the modules found do
    not match the config (a renamed or customised model).
    """
    family = family_of(model)
    pattern = re.compile(r"(?:^|\.)" + family.attention + r"$")
    layers: dict[int, AttentionLayer] = {}
    for name, module in model.named_modules():
        match = pattern.search(name)
        if match is None:
            continue
        index = int(match.group(1))
        out_path = family.out_proj
        if out_path.startswith("^"):
            base = name.rsplit(".", 1)[0]
            out_path = base + out_path[1:]
        else:
            out_path = f"{name}.{out_path}"
        try:
            out_proj = model.get_submodule(out_path)
        except AttributeError:
            raise UnsupportedModelError(
                f"{type(model).__name__}: attention module {name!r} has no output projection "
                f"at {out_path!r} as the {family.name} family expects"
            ) from None
        if index in layers:
            raise UnsupportedModelError(
                f"{type(model).__name__}: two attention modules claim layer {index} "
                f"({layers[index].name!r} and {name!r}); probe expects one stack of layers"
            )
        layers[index] = AttentionLayer(index, name, module, out_proj, family.conv1d)
    expected = _n_layers(model)
    if not layers or (expected is not None and sorted(layers) != list(range(expected))):
        raise UnsupportedModelError(
            f"{type(model).__name__} ({family.name} family): found attention modules for "
            f"layers {sorted(layers)}, expected 0..{expected - 1 if expected else '?'}; the model "
            "does not have the module layout probe knows for this family"
        )
    return [layers[i] for i in sorted(layers)]
