"""Where each layer's attention lives and its output projection, found by detection.

transformers v5 hands every attention call to the function registered under the model's
attention implementation, together with the calling module, so probe needs per layer only
that module and its output projection (W_O); everything else reaches the attention function
as tensors or keyword arguments. Detection finds both from the module tree (the rules are in
:mod:`probe.architectures.detection`); the table :data:`FAMILIES` keeps only what detection
cannot infer (ALBERT's one set of weights shared by every layer) and the names used in reports.

Encoder-decoders (T5, BART, Whisper) are found by :func:`encoder_decoder_layers` and captured by
:class:`probe.encdec.EncoderDecoderProbe`: the same detection runs in the encoder stack and the
decoder stack, and the decoder's attention modules named like a cross-attention
(:data:`CROSS_NAMES`) form a third list. :func:`attention_layers` (used by ``AttentionProbe``)
refuses them and names that class.

Modules, one job each (an arrow: may import; every module may import torch and
``probe.errors``, and none imports the rest of probe)::

    families.py   the family table: report names, proven model types, ALBERT's layer order
                                                                         (none of these)
    layer.py      AttentionLayer: one layer's module and W_O, read even when offloaded or
                  sharded                                                (none of these)
    detection.py  find: attention modules and output projections under one root -> families
    stacks.py     attention_layers and encoder_decoder_layers: where to search, layer order,
                  counts checked against the config          -> families, layer, detection

Everything public is importable from ``probe.architectures`` itself.

>>> "llama" in SUPPORTED_MODEL_TYPES, "t5" in ENCODER_DECODER_MODEL_TYPES
(True, True)
"""

from .families import (ENCODER_DECODER_FAMILIES, ENCODER_DECODER_MODEL_TYPES, FAMILIES,
                       SUPPORTED_MODEL_TYPES, Family, family_name, supported_families)
from .layer import AttentionLayer
from .stacks import CROSS_NAMES, EncoderDecoderLayers, attention_layers, encoder_decoder_layers

__all__ = [
    "CROSS_NAMES", "ENCODER_DECODER_FAMILIES", "ENCODER_DECODER_MODEL_TYPES", "FAMILIES",
    "SUPPORTED_MODEL_TYPES", "AttentionLayer", "EncoderDecoderLayers", "Family",
    "attention_layers", "encoder_decoder_layers", "family_name", "supported_families",
]
