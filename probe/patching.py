"""Causal interventions on attention heads: ablation and activation patching on aligned pairs.

Interventions happen inside probe's own attention backend (:mod:`probe.capture`): after each
layer's eager attention, a callback may replace the attention pattern of chosen heads (z is
then recomputed from the new pattern and the values), the values of chosen key/value heads, or
the per-head output z, for chosen batch rows and token positions. The same code therefore works
for every supported family and for models loaded with any attention implementation;
grouped-query models are patched per query head (``value`` per key/value head). Residual-stream
patches replace a block's input through a forward pre-hook on the block. Everything is scoped:
on leaving a ``with`` block every hook is removed and the model's attention implementation is
restored, so outputs afterwards are bit-identical to those before, also after an exception.

Positions: a pair's tokens are aligned with :func:`probe.align.align`. ``all`` patches every
target position that has a counterpart in the source (matched tokens, special tokens included,
and position by position inside replaced spans of equal length on both sides); ``aligned``
only matched content tokens (no special tokens, no cue tokens); ``cue`` only the cue's tokens;
an int or list of ints: those target positions. A pattern patch maps the source row's weights
onto the target's keys through the ``all`` correspondence; the source's weight on keys with no
counterpart in the target (an inserted "not") is left out, so such rows sum to less than 1.

Imports numpy, torch, :mod:`probe.capture`, :mod:`probe.errors`, :mod:`probe.inputs`,
:mod:`probe.patch_ops`, :mod:`probe.patch_readout` and :mod:`probe.patch_single`.

>>> from probe import load_model
>>> model, tokenizer = load_model()
>>> with Patcher(model, tokenizer) as pt:
...     r = pt.effect("A robin is a bird.", "A robin is not a bird.", heads=[(5, 3)])
>>> r.small_gap, -1.0 < r.effect < 1.0
(False, True)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from .capture import AttentionProbe
from .errors import InputError
from .inputs import device_of, encode, max_length_of, no_cache, pad, pad_id_of
from .patch_ops import Ops, block_modules, installed
from .patch_readout import METRICS, Readout
from .patch_single import PatchResult, ablation_ops, pair_effect, patch_ops

COMPONENTS = ("z", "pattern", "value")
DIRECTIONS = ("noising", "denoising")


@dataclass
class Source:
    """What a source run left: per layer z, pattern, v and block inputs of one text, and its readout."""

    ids: list[int]
    z: torch.Tensor          # [layer, head, token, d_head]
    pattern: torch.Tensor    # [layer, head, query, key]
    v: torch.Tensor          # [layer, kv_head, token, d_head]
    resid: torch.Tensor      # [layer, token, d_model]: each block's input
    readout: torch.Tensor    # [d_model] embedding, or [vocab] logits


def _config_int(model, *names):
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in names:
        value = getattr(text, name, None)
        if isinstance(value, int):
            return value
    return None


class Patcher:
    """Attach probe's backend to ``model`` for interventions; use it as a context manager.

    ``metric``: ``embedding`` (mean of the last hidden state over non-special tokens, compared
    by cosine with the source's) or ``logit`` (the logit of the pair's target token at the
    mask token, else at the last real token; needs a language-modelling head). Default:
    ``logit`` where the model has an output head, else ``embedding``.
    """

    def __init__(self, model, tokenizer, *, metric: str | None = None, min_gap: float | None = None):
        self.model, self.tokenizer = model, tokenizer
        #: what forwards are read and scored by (:class:`~probe.patch_readout.Readout`)
        self.readout = Readout(model, tokenizer, metric, min_gap)
        self.metric, self.min_gap = self.readout.metric, self.readout.min_gap
        #: probe's attention backend, attached with recording paused: interventions only
        self.probe = AttentionProbe(model, tokenizer)
        self.layers = self.probe.layers
        self.n_layers = len(self.layers)
        self.n_heads = _config_int(model, "num_attention_heads", "n_head", "n_heads")
        self.n_kv_heads = _config_int(model, "num_key_value_heads") or self.n_heads
        self.blocks = block_modules(model, self.layers)
        self.device = device_of(model)
        #: keywords of every forward: no key/value cache, what the readout needs
        self.forward_options = {**no_cache(model), **self.readout.options}
        #: run the layers below a patched one once per pair (see :func:`probe.patch_ops.expand_hook`)
        self.reuse = self.blocks is not None
        self._was_training = None
        self._scope = contextlib.ExitStack()

    # ----------------------------------------------------------------- scope
    def __enter__(self) -> Patcher:
        self._was_training = self.model.training
        self.model.eval()
        with contextlib.ExitStack() as scope:
            scope.enter_context(self.probe)
            scope.enter_context(self.probe.paused())
            self._scope = scope.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.probe.intervention = None
            self._scope.close()
        finally:
            self.model.train(self._was_training)

    # ----------------------------------------------------------------- checks
    def check_head(self, layer: int, head: int, component: str = "z") -> None:
        """A clear error for a layer or head out of range."""
        n = self.n_kv_heads if component == "value" else self.n_heads
        if not (isinstance(layer, (int, np.integer)) and 0 <= layer < self.n_layers):
            raise InputError(f"layer {layer} does not exist: the model has layers 0..{self.n_layers - 1}")
        if not (isinstance(head, (int, np.integer)) and 0 <= head < n):
            what = "key/value heads" if component == "value" else "heads"
            raise InputError(f"head {head} of layer {layer} does not exist: the model has {what} 0..{n - 1}")

    # ----------------------------------------------------------------- forward passes
    def encode(self, texts) -> list[list[int]]:
        return encode(self.tokenizer, list(texts), max_length=max_length_of(self.model, self.tokenizer)).ids

    def forward(self, rows, ops: Ops | None = None, *, expand=None, record=None):
        """Readouts ``[row, ...]`` of one forward of right-padded id rows under ``ops``.

        ``expand=(layer, repeat)`` runs the layers below ``layer`` once per row and repeats each
        row ``repeat`` times from there on (rows of the output: ``len(rows) * repeat``).
        ``record``: a dict that receives per-layer ``z``, ``pattern``, ``v`` and ``resid``.
        """
        ids, mask = pad(rows, pad_id_of(self.tokenizer), self.device)
        with installed(self, ops, expand=expand, n_rows=len(rows), record=record):
            with torch.inference_mode():
                out = self.model(input_ids=ids, attention_mask=mask, **self.forward_options)
        if expand is not None and expand[1] > 1:
            ids, mask = ids.repeat_interleave(expand[1], 0), mask.repeat_interleave(expand[1], 0)
        return self.readout.read(out, ids, mask)

    def source(self, rows) -> list[Source]:
        """Run each id row (batched, right-padded) and keep what a patch needs from it."""
        record: dict = {}
        readouts = self.forward(rows, record=record)
        out = []
        for i, r in enumerate(rows):
            n = len(r)
            z = torch.stack([record["z"][layer][i, :, :n] for layer in range(self.n_layers)])
            pat = torch.stack([record["pattern"][layer][i, :, :n, :n] for layer in range(self.n_layers)])
            v = torch.stack([record["v"][layer][i, :, :n] for layer in range(self.n_layers)])
            resid = (torch.stack([record["resid"][layer][i, :n] for layer in range(self.n_layers)]).clone()
                     if "resid" in record else None)
            out.append(Source(list(r), z.clone(), pat.clone(), v.clone(), resid, readouts[i]))
        return out

    # ----------------------------------------------------------------- one pair, scoped
    def effect(self, target: str, source: str, heads, *, component: str = "z", positions="all",
               target_token: str | None = None) -> PatchResult:
        """Patch ``heads`` [(layer, head), ...] of ``target`` from ``source``; the normalised
        effect (:func:`~probe.patch_single.pair_effect`)."""
        return pair_effect(self, target, source, heads, component=component,
                           positions=positions, target_token=target_token)

    @contextlib.contextmanager
    def ablate(self, heads, mode: str = "zero", *, reference=None, source: str | None = None):
        """Inside the block, every forward of the model has ``heads`` ablated at every position
        (``zero``, ``mean`` over ``reference`` texts, or ``resample`` from ``source``: see
        :func:`~probe.patch_single.ablation_ops`)."""
        with self.intervening(ablation_ops(self, heads, mode, reference=reference, source=source)):
            yield self

    @contextlib.contextmanager
    def patch(self, target: str, source: str, heads, *, component: str = "z", positions="all"):
        """Inside the block, forwards of ``target`` (any batch of it) run with ``heads`` patched from ``source``."""
        with self.intervening(patch_ops(self, target, source, heads, component=component,
                                        positions=positions)):
            yield self

    @contextlib.contextmanager
    def intervening(self, ops: Ops):
        """Apply ``ops`` to every forward inside the block (residual patches included)."""
        with installed(self, ops):
            yield ops


def kv_group(n_heads: int, n_kv_heads: int, kv_head: int) -> list[int]:
    """The query heads that read key/value head ``kv_head``.

    >>> kv_group(8, 2, 1)
    [4, 5, 6, 7]
    """
    g = n_heads // n_kv_heads
    return list(range(kv_head * g, (kv_head + 1) * g))


__all__ = ["Patcher", "PatchResult", "Source", "kv_group", "COMPONENTS", "DIRECTIONS", "METRICS"]
