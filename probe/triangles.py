"""Which keys of a capture a run file stores as packed lower triangles (about half the bytes).

A layer that attends causally holds nothing above the diagonal of its [head, query, key]
squares: -inf in ``scores`` and 0 in ``pattern``. A run stores those keys as the lower
triangle of each square (unit ``triangle``, :mod:`probe.store.layout`) and reads them back as
the full squares. A layer counts as causal when its attention module says so: transformers
sets ``is_causal`` on every attention module (True in GPT-2, Llama, Mistral, Qwen, ... and in
sliding-window layers, whose squares are lower triangular too; False in BERT-style encoders
and in Gemma 3 with ``use_bidirectional_attention``). Nothing here trusts that flag with
data: the writer checks every batch, cell by cell, and refuses a value above a diagonal
(:class:`~probe.store.NotTriangularError`) instead of dropping it.

One job: that decision. Imports :mod:`probe.names` and the store's :mod:`probe.store.tensors`
(which components a triangle can hold); the runner calls it, the writer does the packing.

>>> from types import SimpleNamespace as NS
>>> probe = NS(layers=[NS(index=0, module=NS(is_causal=True)), NS(index=1, module=NS())])
>>> triangle_keys(probe, ["blocks.0.attn.pattern", "blocks.0.attn.q", "blocks.1.attn.scores"])
['blocks.0.attn.pattern']
"""

from __future__ import annotations

from . import names
from .store.tensors import ABOVE_DIAGONAL


def causal_layers(probe) -> set[int]:
    """Indices of the probe's layers whose attention module has ``is_causal`` set to True."""
    return {layer.index for layer in probe.layers
            if getattr(layer.module, "is_causal", False) is True}


def triangle_keys(probe, stored_keys, pack_causal: bool = True) -> list[str]:
    """The stored keys to keep as packed lower triangles, sorted (as the run's
    ``triangle_keys`` attribute lists them): scores and pattern of the causal layers
    (:func:`causal_layers`); none when ``pack_causal`` is False."""
    if not pack_causal:
        return []
    causal = causal_layers(probe)
    parsed = {key: names.parse_key(key) for key in stored_keys}
    return sorted(key for key, (layer, component) in parsed.items()
                  if component in ABOVE_DIAGONAL and layer in causal)
