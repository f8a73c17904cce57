"""The table of model families: their names in reports, the model types the test suite
proves, and what detection cannot infer (ALBERT's one set of weights shared by every layer).

One job: facts per family that are not in the module tree. Imports torch and
``probe.errors`` only.

>>> sorted(SUPPORTED_MODEL_TYPES)[:3]
['albert', 'bert', 'distilbert']
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import UnsupportedModelError


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
OUTSIDE_INTERFACE = ("deberta-v2", "deberta", "falcon", "bloom", "gpt_neo")


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


def family_of(model_type) -> Family | None:
    """The single-stack family that lists ``model_type``, or None."""
    return next((f for f in FAMILIES if model_type in f.model_types), None)
