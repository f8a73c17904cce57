"""What an :class:`~probe.encdec.EncoderDecoderProbe` collects during one forward call, made
into a :class:`~probe.captures.Capture` of :class:`EncDecExample`: per attention layer of each
kind the tensors its backend records, the encoder's and decoder's inputs read by hooks on the
two stacks, and padding spans per stack (encoder tokens, decoder tokens, and the source axis of
cross-attention).

This module's one job is that recording (the counterpart of :mod:`probe.recording`, whose
helpers it uses). It imports :mod:`probe.names`, :mod:`probe.attention`,
:mod:`probe.captures`, :mod:`probe.recording` and :mod:`probe.errors`; only
:mod:`probe.encdec` imports it.

>>> rec = EncDecRecorder({("decoder", "attn", 0): frozenset({"pattern"})},
...                      ["decoder.blocks.0.attn.pattern"])
>>> rec.after_forward(None, (), {}, None) is None, rec.captures  # no layer recorded: no capture
(True, [])
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from . import names
from .attention import masked_positions, value_norms, value_weighted
from .captures import Capture, Example
from .errors import ProbeError, UnsupportedModelError
from .recording import spans_of, to_numpy


def _arguments(module, args, kwargs) -> dict:
    """A forward call's arguments by name (positional ones bound to the signature)."""
    try:
        return dict(inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments)
    except (TypeError, ValueError):
        return dict(kwargs)


class EncDecExample(Example):
    """One example of an encoder-decoder capture: :class:`~probe.captures.Example` (``tokens``,
    ``input_ids`` and ``text`` are the encoder's; None for Whisper's audio features) plus the
    decoder's ``decoder_tokens``, ``decoder_input_ids`` and ``decoder_text``."""

    def __init__(self, tokens, keys, getter, *, decoder_tokens=None, decoder_input_ids=None,
                 decoder_text=None, n_source=None, **kwargs):
        super().__init__(tokens, keys, getter, **kwargs)
        self.decoder_tokens: list[str] | None = decoder_tokens
        self.decoder_input_ids: np.ndarray | None = decoder_input_ids
        self.decoder_text: str | None = decoder_text
        #: encoder positions kept (tokens, or audio frames after Whisper's convolutions)
        self.n_source: int | None = n_source

    def narrowed(self, keys) -> EncDecExample:
        return EncDecExample(self.tokens, keys, self._get, text=self.text,
                             input_ids=self.input_ids, meta=self.meta, index=self.index,
                             decoder_tokens=self.decoder_tokens,
                             decoder_input_ids=self.decoder_input_ids,
                             decoder_text=self.decoder_text, n_source=self.n_source)

    @property
    def n_tokens(self) -> int | None:
        return self.n_source

    def __repr__(self) -> str:
        enc = (f"{self.n_source} encoder positions" if self.tokens is None else
               f"{self.n_source} encoder tokens {' '.join(self.tokens[:8])!r}")
        dec = len(self.decoder_tokens) if self.decoder_tokens is not None else "?"
        return f"EncDecExample({enc}, {dec} decoder tokens, {len(self._keys)} keys)"


class EncDecRecorder:
    """Collects the chosen layers' tensors of each forward call of an encoder-decoder; one
    Capture per call.

    ``plan`` maps ``(stack, site, layer index)`` -> components to keep; ``keys`` is what
    examples expose. :meth:`before_forward` and :meth:`after_forward` are the model's forward
    hooks, :meth:`before_stack` the encoder's and decoder's pre-hooks, and :meth:`record` is
    called by the attention backend once per layer.
    """

    def __init__(self, plan: dict, keys, tokenizer=None):
        self.plan, self.keys, self.tokenizer = plan, keys, tokenizer
        self.captures: list[Capture] = []
        #: per site prefix (``"decoder.blocks.0.cross_attn"``): scaling and position bias seen
        self.layer_facts: dict[str, dict] = {}
        self._pending: dict[tuple, dict[str, torch.Tensor]] = {}  # (stack, site, layer): tensors
        self._call: dict = {}

    def reset(self) -> None:
        """Forget a forward call in progress (on detach)."""
        self._pending, self._call = {}, {}

    def before_forward(self, module, args, kwargs):
        """The model's forward pre-hook: a new call begins."""
        self._pending, self._call = {}, {"stacks": {}, "masked": {}, "width": {}}

    def before_stack(self, which, module, args, kwargs):
        """The pre-hook of stack ``which`` (encoder or decoder): its ids and masks."""
        got = _arguments(module, args, kwargs)
        ids = got.get("input_ids")
        self._call.setdefault("stacks", {})[which] = {
            "input_ids": ids if torch.is_tensor(ids) else None,
            "attention_mask": got.get("attention_mask"),
            "encoder_attention_mask": got.get("encoder_attention_mask"),
        }

    def record(self, stack, site, layer, query, key, value, scores, pattern, z, mask, facts):
        """One attention call's tensors (what the backend computed), kept as planned."""
        prefix = f"{stack}.blocks.{layer.index}.{site}"
        self.layer_facts[prefix] = facts
        if site == "attn" and query.shape[-2] != key.shape[-2]:
            raise ProbeError(
                f"{prefix}: {query.shape[-2]} queries against {key.shape[-2]} keys (a key/value "
                "cache is in use); probe captures full forward passes only: call the model with "
                "use_cache=False and without a cache (cache=, past_key_values=)")
        call = self._call
        call.setdefault("masked", {})[(stack, site)] = mask is not None
        call.setdefault("width", {})[(stack, site)] = (query.shape[-2], key.shape[-2])
        wanted = self.plan.get((stack, site, layer.index))
        if not wanted:
            return
        got = {"q": query, "k": key, "v": value, "pattern": pattern, "z": z}
        got = {c: t for c, t in got.items() if c in wanted}
        if "scores" in wanted:
            got["scores"] = (scores if mask is None else
                             scores.masked_fill(masked_positions(mask), float("-inf")))
        if "value_norm" in wanted:
            got["value_norm"] = value_norms(value, layer.output_weight(value.device).detach(),
                                            query.shape[1])
        self._pending[(stack, site, layer.index)] = {c: t.detach() for c, t in got.items()}

    def after_forward(self, module, args, kwargs, output):
        """The model's forward hook: the call's tensors become one Capture."""
        pending, call = self._pending, self._call
        self._pending, self._call = {}, {}
        if not pending:
            return None
        missing = [f"{s}.blocks.{i}.{t}" for s, t, i in sorted(set(self.plan) - set(pending))]
        if missing:
            hint = (" (the encoder did not run in this call: pass the encoder's inputs, not "
                    "encoder_outputs, or select decoder keys only)"
                    if any(m.startswith("encoder.") for m in missing) else "")
            raise UnsupportedModelError(
                f"{', '.join(missing[:4])} were not seen by the probe's attention backend during "
                f"this forward call{hint}")
        arrays = {names.key(layer, c, stack=stack, site=site): to_numpy(t)
                  for (stack, site, layer), tensors in pending.items() for c, t in tensors.items()}
        batch = next(iter(arrays.values())).shape[0]
        stacks = call.get("stacks", {})
        enc_in, dec_in = stacks.get("encoder", {}), stacks.get("decoder", {})
        enc_spans, dec_spans, src_spans = _call_spans(call, enc_in, dec_in, batch)
        enc_ids, dec_ids = (None if d.get("input_ids") is None
                            else d["input_ids"].detach().cpu().numpy() for d in (enc_in, dec_in))
        examples = [self._example(arrays, row, enc_spans[row], dec_spans[row], src_spans[row],
                                  enc_ids, dec_ids) for row in range(batch)]
        self.captures.append(Capture(examples, self.keys))
        return None

    def _example(self, arrays, row, enc, dec, src, enc_ids, dec_ids) -> EncDecExample:
        def get(key):
            parts = names.parse_key(key)
            if parts.component in names.DERIVED and key not in arrays:
                return value_weighted(get(names.sibling(key, "pattern")),
                                      get(names.sibling(key, "value_norm")))
            tokens_span = enc if parts.stack == "encoder" else dec
            index = tuple(slice(*src) if axis == names.SOURCE
                          else slice(*tokens_span) if axis in names.SEQUENCE_AXES
                          else slice(None) for axis in names.axes(key))
            return arrays[key][row][index]

        def tokens(ids, span):
            if ids is None or self.tokenizer is None:
                return None
            return self.tokenizer.convert_ids_to_tokens(ids[row, span[0]:span[1]].tolist())

        return EncDecExample(
            tokens(enc_ids, enc), self.keys, get,
            input_ids=None if enc_ids is None else enc_ids[row, enc[0]:enc[1]],
            decoder_tokens=tokens(dec_ids, dec),
            decoder_input_ids=None if dec_ids is None else dec_ids[row, dec[0]:dec[1]],
            n_source=enc[1] - enc[0])


def _call_spans(call: dict, enc_in: dict, dec_in: dict, batch: int):
    """Each row's ``(start, stop)`` in the encoder, the decoder and the cross-attention's source
    of one forward call: from each stack's attention mask where that site used a mask, else
    every position (widths as the backend saw them)."""
    masked, width = call["masked"], call["width"]
    n_enc = (width.get(("encoder", "attn")) or width[("decoder", "cross_attn")][::-1])[0]
    n_dec = (width.get(("decoder", "attn")) or width[("decoder", "cross_attn")])[0]

    def spans(mask, used, n):
        return spans_of(mask if used else None, batch, n)

    enc_spans = spans(enc_in.get("attention_mask"), masked.get(("encoder", "attn")), n_enc)
    dec_spans = spans(dec_in.get("attention_mask"), masked.get(("decoder", "attn"), True), n_dec)
    if ("decoder", "cross_attn") not in masked:
        return enc_spans, dec_spans, enc_spans
    src_mask = dec_in.get("encoder_attention_mask")
    if src_mask is None:
        src_mask = enc_in.get("attention_mask")
    return enc_spans, dec_spans, spans(src_mask, masked[("decoder", "cross_attn")], n_enc)
