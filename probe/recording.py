"""What an :class:`~probe.capture.AttentionProbe` collects during one forward call, made into
a :class:`~probe.captures.Capture`: per layer tensors from the backend, padding spans from the
call's 2D mask, numpy arrays, and value norms through a cached factor of each layer's W_O.

Imports numpy, torch, :mod:`probe.attention`, :mod:`probe.captures`, :mod:`probe.errors` and
:mod:`probe.names`.

>>> import torch
>>> spans_of(torch.tensor([[1, 1, 0], [0, 1, 1]]), 2, 3)
[(0, 2), (1, 3)]
"""

from __future__ import annotations

import numpy as np
import torch

from . import names
from .attention import check_output_weight, masked_positions, value_norm_factor, value_norms_with
from .captures import Capture, CapturedBatch
from .errors import InputError, ProbeError, UnsupportedModelError


def spans_of(attention_mask, batch: int, width: int) -> list[tuple[int, int]]:
    """(start, stop) of each row's real tokens from a 2D mask; they must be contiguous."""
    if attention_mask is None:
        return [(0, width)] * batch
    if attention_mask.dim() != 2:
        raise InputError(
            "probe needs a 2D attention_mask [batch, token] to remove padding; got shape "
            f"{tuple(attention_mask.shape)}. Pass the tokenizer's 2D mask."
        )
    real = attention_mask.detach().to("cpu", torch.bool).numpy()
    spans = []
    for row, keep in enumerate(real):
        positions = np.flatnonzero(keep)
        if positions.size == 0:
            raise InputError(f"row {row} of the batch has no real token (attention_mask is all 0)")
        start, stop = int(positions[0]), int(positions[-1]) + 1
        if positions.size != stop - start:
            raise InputError(
                f"row {row}: the real tokens are not contiguous in attention_mask; probe "
                "supports left or right padding only"
            )
        spans.append((start, stop))
    return spans


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A detached tensor on the CPU as numpy (bfloat16, which numpy lacks, as float32)."""
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.cpu().numpy()


def head_picker(heads, n: int, device):
    """``f(tensor)``: the tensor's head axis (dim 1) cut to ``heads``; the tensor itself when
    ``heads`` is every head in order."""
    if tuple(heads) == tuple(range(n)):
        return lambda t: t
    index = torch.tensor(heads, dtype=torch.long, device=device)
    return lambda t: t.index_select(1, index.to(t.device))


class ValueNormFactors:
    """Per layer, :func:`~probe.attention.value_norm_factor` of its W_O, recomputed only when
    W_O changes.

    A change is seen by a fingerprint of W_O's content, ``W_O @ r`` for a fixed random +-1
    vector r (one pass over W_O, a d_head-th of the factor's cost), compared bit for bit, and by
    its shape and dtype. Identity and version counters would not do: ``weight.data.mul_(2)``
    bumps no version counter, and offloaded weights are fresh tensors on every call. An edit
    below the fingerprint's rounding (about 1e-6 of a weight's typical size) can go unseen;
    its effect on a norm is below float32 rounding.
    """

    def __init__(self):
        self._entries: dict[int, tuple] = {}
        self._signs: dict[tuple, torch.Tensor] = {}

    def _fingerprint(self, w: torch.Tensor) -> torch.Tensor:
        key = (w.shape[-1], w.dtype, w.device)
        if key not in self._signs:
            g = torch.Generator().manual_seed(15)
            signs = torch.randint(0, 2, (w.shape[-1],), generator=g).mul_(2).sub_(1)
            self._signs[key] = signs.to(dtype=w.dtype, device=w.device)
        return torch.mv(w, self._signs[key])

    def get(self, layer, n_heads: int, d_head: int, v: torch.Tensor):
        with torch.no_grad():
            w = layer.output_weight().detach()  # on its own device: no copy unless W_O changed
            check_output_weight(w, n_heads, d_head)
            fingerprint = self._fingerprint(w)
            entry = self._entries.get(layer.index)
            if (entry is None or entry[0] != (w.shape, w.dtype, n_heads)
                    or not torch.equal(entry[1], fingerprint)):
                entry = ((w.shape, w.dtype, n_heads), fingerprint, {})
                self._entries[layer.index] = entry
            compute = torch.float32 if v.dtype in (torch.float16, torch.bfloat16) else v.dtype
            cast = entry[2]  # the factor on v's device in the computing dtype (float64 dropped)
            if (v.device, compute) not in cast:
                cast[v.device, compute] = value_norm_factor(w, n_heads).to(v.device, compute)
            return cast[v.device, compute]


class ForwardCall:
    """What one forward call of the model knows while its layers are recorded: its input ids
    and 2D attention mask (from the model's pre-hook), how often each shared attention
    module has run, the rows' real-token spans and the masked positions of each mask (both
    made once per call: layers share them)."""

    def __init__(self, input_ids=None, attention_mask=None):
        self.input_ids = input_ids if torch.is_tensor(input_ids) else None
        self.attention_mask = attention_mask
        self._uses: dict[int, int] = {}
        self._spans = None
        self._masked: list = []

    def layer_of(self, layer, layers):
        """The layer this call of ``layer.module`` computes: the k-th call of a module shared by
        several ``layers`` (ALBERT) in one forward is its k-th layer; otherwise ``layer``."""
        uses = [u for u in layers if u.module is layer.module]
        if len(uses) == 1:
            return layer
        k = self._uses.get(id(layer.module), 0)
        self._uses[id(layer.module)] = k + 1
        return uses[k % len(uses)]

    def spans(self, batch: int, width: int) -> list[tuple[int, int]]:
        """The rows' real-token spans (:func:`spans_of` of the call's mask), made once."""
        if self._spans is None:
            self._spans = spans_of(self.attention_mask, batch, width)
        return self._spans

    def masked(self, mask: torch.Tensor) -> torch.Tensor:
        """:func:`~probe.attention.masked_positions` of ``mask``, made once per mask."""
        for held, positions in self._masked:  # `held` keeps the mask alive: its address is unique
            if (held.data_ptr() == mask.data_ptr() and held.shape == mask.shape
                    and held.stride() == mask.stride() and held.dtype == mask.dtype):
                return positions
        positions = masked_positions(mask)
        self._masked.append((mask, positions))
        del self._masked[:-4]  # bounded, even for calls that bypass the model's forward hooks
        return positions


class Recorder:
    """Collects the chosen layers' tensors of each forward call; one Capture per call.

    ``plan`` maps layer index -> components to keep; ``keys`` is what examples expose.
    :meth:`before_forward` and :meth:`after_forward` are the model's forward hooks,
    :meth:`record` is called by the attention backend once per layer.
    """

    def __init__(self, layers, plan: dict, keys, tokenizer=None, heads=None):
        self.layers, self.plan, self.keys, self.tokenizer = layers, plan, tuple(keys), tokenizer
        #: ``{layer: query heads}`` to keep (layers absent: every head)
        self.heads = dict(heads or {})
        #: per captured layer, ``(query heads, kv heads)`` its head axes hold (seen at capture)
        self.head_map: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self.captures: list[Capture] = []
        self.layer_facts: dict[int, dict] = {}
        self._pending: dict[int, dict[str, torch.Tensor]] = {}
        self._call = ForwardCall()
        self._factors = ValueNormFactors()
        #: None, or ``f(layer, {component: tensor [batch, ...]}, spans)``: each layer's
        #: tensors go there as soon as they are computed and are not kept (layer streaming);
        #: the forward call then makes no Capture
        self.stream = None

    def keeps(self, layer: int, component: str) -> bool:
        """Whether ``component`` of layer ``layer`` is captured."""
        return component in self.plan.get(layer, ())

    def reset(self) -> None:
        """Forget a forward call in progress (on detach)."""
        self._pending, self._call = {}, ForwardCall()

    def before_forward(self, module, args, kwargs):
        self._pending = {}
        self._call = ForwardCall(kwargs.get("input_ids", args[0] if args else None),
                                 kwargs.get("attention_mask"))

    def layer_of_call(self, layer):
        """The layer this call of ``layer.module`` computes (:meth:`ForwardCall.layer_of`)."""
        return self._call.layer_of(layer, self.layers)

    def record(self, layer, query, key, value, scores, pattern, z, mask, sink=None, facts=None,
               heads_cut=False):
        """Keep (or stream) what the plan wants of one layer's call. ``heads_cut``: scores,
        pattern and sink are already cut to the layer's heads (computed in blocks)."""
        if facts is not None:  # what the model passed to its attention function, per layer
            self.layer_facts[layer.index] = facts
        wanted = self.plan.get(layer.index)
        if not wanted:
            return
        if query.shape[-2] != key.shape[-2]:
            raise ProbeError(
                f"layer {layer.index}: {query.shape[-2]} queries against {key.shape[-2]} keys "
                "(a key/value cache is in use); probe captures full forward passes only: call "
                "the model with use_cache=False and without a cache (cache=, past_key_values=)"
            )
        n_heads, n_kv = query.shape[1], key.shape[1]
        heads, kv_heads = self.head_axes(layer.index, n_heads, n_kv)
        # per-head tensors keep only the selected heads (a copy of those heads alone: the full
        # tensors the backend made for the model are not kept); k and v the kv heads they read
        pick = head_picker(heads, n_heads, query.device)
        pick_kv = head_picker(kv_heads, n_kv, query.device)
        pick_cut = (lambda t: t) if heads_cut else pick
        got = {name: cut(tensor) for name, tensor, cut in (
            ("q", query, pick), ("k", key, pick_kv), ("v", value, pick_kv),
            ("scores", scores, pick_cut), ("pattern", pattern, pick_cut), ("z", z, pick))
            if name in wanted}
        if "scores" in got and mask is not None:
            got["scores"] = _fill_masked(got["scores"], self._call.masked(mask))
        if "value_norm" in wanted:
            factor = self._factors.get(layer, n_heads, value.shape[-1], value)
            got["value_norm"] = pick(value_norms_with(value.detach(), factor))
        if "sink" in wanted:
            got["sink"] = pick_cut(sink) if sink is not None else query.new_zeros(
                (query.shape[0], len(heads), query.shape[2]))
        got = {c: got[c].detach() for c in names.COMPONENTS if c in got}
        if self.stream is not None:
            self._pending[layer.index] = {}  # seen: checked in after_forward
            self.stream(layer.index, got, self._call.spans(query.shape[0], query.shape[-2]))
            return
        self._pending[layer.index] = got

    def head_axes(self, index: int, n_heads: int, n_kv: int):
        """``(query heads, kv heads)`` layer ``index`` keeps, checked against the call's sizes."""
        heads = self.heads.get(index)
        if heads is None:
            heads = tuple(range(n_heads))
        elif heads and heads[-1] >= n_heads:
            raise InputError(f"head {heads[-1]} of layer {index} does not exist: the layer has "
                             f"heads 0..{n_heads - 1}")
        kv_heads = names.kv_heads_of(heads, n_heads, n_kv)
        self.head_map[index] = (tuple(heads), kv_heads)
        return heads, kv_heads

    def after_forward(self, module, args, kwargs, output):
        pending, call = self._pending, self._call
        self._pending, self._call = {}, ForwardCall()
        if not pending:
            return None
        missing = sorted(set(self.plan) - set(pending))
        if missing:
            raise UnsupportedModelError(
                f"layers {missing} were not seen by the probe's attention backend during this "
                "forward call; this model routes some attention around transformers' "
                "AttentionInterface, so probe cannot capture it"
            )
        if self.stream is None:
            head_map = {layer: self.head_map[layer] for layer in sorted(pending)}
            self.captures.append(_capture_of(pending, call, self.keys, self.tokenizer, head_map))
        return None


def _fill_masked(scores: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Scores with masked ``positions`` set to -inf, in place: after the softmax the backend's
    scores tensor serves only the capture (the softmax saved its output, not its input)."""
    if scores.requires_grad:
        return scores.masked_fill(positions, float("-inf"))
    return scores.masked_fill_(positions, float("-inf"))


def _capture_of(pending: dict, call: ForwardCall, keys, tokenizer, head_map) -> Capture:
    """One forward call's Capture: the layers' tensors ``pending`` as numpy arrays, one
    Example per row with its padding removed and its tokens named."""
    arrays = {names.key(layer, component): to_numpy(tensor)
              for layer, tensors in pending.items() for component, tensor in tensors.items()}
    first = next(iter(arrays.values()))
    batch, width = first.shape[0], first.shape[2]
    spans = call.spans(batch, width)
    ids = None if call.input_ids is None else call.input_ids.detach().cpu().numpy()
    tokens = None
    if ids is not None and tokenizer is not None:
        tokens = [tokenizer.convert_ids_to_tokens(ids[row, a:b].tolist())
                  for row, (a, b) in enumerate(spans)]
    batch_capture = CapturedBatch(arrays, spans, tokens, keys=keys, input_ids=ids,
                                  head_map=head_map)
    return Capture([batch_capture.example(i) for i in range(batch)], keys, batch=batch_capture)
