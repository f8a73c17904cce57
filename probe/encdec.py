"""`EncoderDecoderProbe`: exact attention capture for encoder-decoders (T5, BART, Whisper).

An encoder-decoder has three kinds of attention, each captured under its own keys
(:mod:`probe.names`): the encoder's self-attention ``encoder.blocks.{l}.attn.*``, the
decoder's causal self-attention ``decoder.blocks.{l}.attn.*`` and the decoder's
cross-attention ``decoder.blocks.{l}.cross_attn.*``, whose keys and values are encoder tokens
(axis ``source``: a cross-attention pattern is ``[head, query (decoder token), source (encoder
token)]``).

The lifecycle is :class:`probe.lifecycle.ProbeLifecycle`'s, as for
:class:`probe.capture.AttentionProbe` (a registered attention backend, its eager mask function,
hooks that exist only inside the ``with`` block, the model's own implementation restored on
exit), with a backend of its own, ``probe_encdec``, that also reproduces T5's additive relative
position bias: ``scores = q k^T * scaling + position_bias + mask`` (T5's scaling is 1.0), in
the order of the model's own eager function, so ``pattern`` equals ``output_attentions``
exactly. Padding is removed per stack: encoder tokens with the
encoder's 2D ``attention_mask``, decoder tokens with ``decoder_attention_mask``; where the
model masks nothing (Whisper's encoder ignores any mask) every position is kept.

Captures live in memory only; writing encoder-decoder runs to HDF5 is not supported yet.

This module's one job is that backend and the probe's forward-and-capture call,
:meth:`EncoderDecoderProbe.run_ids`. Choosing keys is :mod:`probe.selection`'s, recording a
call :mod:`probe.encdec_recording`'s, batching inputs :mod:`probe.encdec_batching`'s. It
imports those, :mod:`probe.lifecycle`, :mod:`probe.backends`, :mod:`probe.architectures`,
:mod:`probe.attention`, :mod:`probe.captures`, :mod:`probe.errors` and :mod:`probe.inputs`.

>>> import torch, transformers as T
>>> model = T.T5Model(T.T5Config(vocab_size=64, d_model=16, num_layers=1, num_heads=2, d_kv=8,
...                              d_ff=16)).eval()
>>> with EncoderDecoderProbe(model) as p:
...     caps = p.run_ids([[5, 6, 7, 1]], [[0, 9]])
>>> caps[0]["decoder.blocks.0.cross_attn.pattern"].shape  # head, decoder token, encoder token
(2, 2, 4)
"""

from __future__ import annotations

from functools import partial

import torch

from .architectures import encoder_decoder_layers
from .attention import additive_mask, repeat_kv
from .backends import REGISTRY
from .captures import Capture
from .encdec_batching import capture_inputs
from .encdec_recording import EncDecExample, EncDecRecorder
from .errors import InputError, UnsupportedModelError
from .inputs import device_of, pad, pad_id_of
from .lifecycle import ProbeLifecycle, capture_forward
from .selection import select_encdec_keys

__all__ = ["BACKEND", "EncDecExample", "EncoderDecoderProbe"]

BACKEND = "probe_encdec"

# keyword arguments that change the math in ways this backend does not model
_UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks", "sink_scale", "sliding_window")

_NOT_STORED = ("writing encoder-decoder captures to an HDF5 run file is not supported yet; "
               "EncoderDecoderProbe has no run_to_file: call run() and keep the in-memory Capture "
               "(probe capture --out cannot take an encoder-decoder either)")


def _encdec_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                      position_bias=None, **kwargs):
    """The ``probe_encdec`` backend: T5/BART/Whisper eager attention that records its steps.

    Same operations in the same order as those models' ``eager_attention_forward``:
    ``q k^T * scaling``, plus the position bias (T5), plus the mask, softmax in the logits'
    dtype, ``@ v``.
    """
    for name in _UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise UnsupportedModelError(
                f"{type(module).__name__} passes {name!r} to its attention function; "
                "EncoderDecoderProbe does not model that variant, so its captures would be wrong")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    mask = additive_mask(attention_mask, query.dtype)
    if mask is not None and mask.shape[-1] != key.shape[-2]:
        mask = mask[..., : key.shape[-2]]
    n_heads = query.shape[1]
    scores = torch.matmul(query, repeat_kv(key, n_heads).transpose(-1, -2)) * scaling
    if position_bias is not None:
        scores = scores + position_bias
    if mask is not None:
        scores = scores + mask
    pattern = torch.softmax(scores, dim=-1)
    used = pattern
    if dropout and module.training:
        used = torch.nn.functional.dropout(pattern, p=dropout, training=True)
    z = torch.matmul(used, repeat_kv(value, n_heads))
    entry = REGISTRY.entry(module)  # (probe, recorder, stack, site, layer)
    if entry is not None and entry[0].recording:
        _, recorder, stack, site, layer = entry
        recorder.record(stack, site, layer, query, key, value, scores, pattern, z, mask,
                        facts={"scaling": scaling, "position_bias": position_bias is not None
                               and bool(position_bias.detach().abs().max() > 0)})
    return z.transpose(1, 2).contiguous(), pattern


REGISTRY.define(BACKEND, _encdec_attention)


class EncoderDecoderProbe(ProbeLifecycle):
    """Capture the encoder self-attention, decoder self-attention and cross-attention of an
    encoder-decoder (T5, BART, Whisper) per layer and head, exactly.

    Parameters
    ----------
    model: a transformers encoder-decoder (``config.is_encoder_decoder``).
    tokenizer: needed by :meth:`run` for texts, and to label tokens; optional otherwise.
    layers: layer indices to capture in each stack (negative counts from the end); default all.
    keys: component names (``"pattern"``, ``"q"``, ...), applied to every chosen layer of all
        three kinds, and/or full keys such as ``"decoder.blocks.0.cross_attn.pattern"``.

    Inside the ``with`` block call :meth:`run` (texts, or audio features for Whisper) or
    :meth:`run_ids`, or call the model yourself (one full forward, ``use_cache=False``, the
    encoder run in the same call) and read :attr:`captures`.
    """

    BACKEND = BACKEND

    def __init__(self, model, tokenizer=None, *, layers=None, keys=None):
        super().__init__(model, tokenizer)
        self.layers = encoder_decoder_layers(model)  # raises UnsupportedModelError early
        self.exposed_keys, self._plan = select_encdec_keys(self.layers.sites(), layers, keys)
        self._recorder = EncDecRecorder(self._plan, self.exposed_keys, tokenizer)

    @property
    def stored_keys(self):
        """Not available: encoder-decoder captures cannot be written to a run file yet."""
        raise UnsupportedModelError(_NOT_STORED)

    def _bindings(self):
        for stack, site, layers in self.layers.sites():
            for layer in layers:
                yield layer.name, layer.module, (self._recorder, stack, site, layer)

    def _hooks(self):
        stacks = [(module, partial(self._recorder.before_stack, which), True)
                  for which, module in (("encoder", self.layers.encoder_stack),
                                        ("decoder", self.layers.decoder_stack))]
        return stacks + super()._hooks()

    def decoder_start(self) -> int:
        """The id the decoder starts from (``decoder_start_token_id``)."""
        for source in (getattr(self.model, "generation_config", None), self.model.config):
            value = getattr(source, "decoder_start_token_id", None)
            if isinstance(value, int):
                return value
        raise InputError(f"{type(self.model).__name__} has no decoder_start_token_id in its "
                         "config or generation config; pass decoder_input_ids explicitly")

    def decoder_pad(self) -> int:
        """The id that pads decoder rows: the model's ``pad_token_id``, else the tokenizer's."""
        value = getattr(self.model.config, "pad_token_id", None)
        if isinstance(value, int):
            return value
        return pad_id_of(self.tokenizer) if self.tokenizer is not None else 0

    def run(self, texts=None, decoder_texts=None, batch_size: int = 32, *,
            input_features=None, decoder_input_ids=None, truncate: bool = False, meta=None,
            out=None, **store_options) -> Capture:
        """Capture encoder inputs and the decoder reading a target: one
        :class:`EncDecExample` per input, in input order.

        The encoder reads ``texts`` (tokenised with the probe's tokenizer) or, for speech
        models (Whisper), ``input_features`` ``[example, mel, frame]``. The decoder reads, per
        example, ``decoder_input_ids`` if given; else ``decoder_start_token_id`` followed by the
        tokens of ``decoder_texts[i]`` except its last one (the decoder's input when trained on
        that target: transformers' ``shift_tokens_right`` of the labels); else
        ``decoder_start_token_id`` alone. Batches are right-padded; the model runs in eval mode
        under ``torch.inference_mode`` without a key/value cache.

        ``out=`` (an HDF5 run file) is refused: writing encoder-decoder runs is not supported
        yet.
        """
        if out is not None or store_options:
            raise UnsupportedModelError(_NOT_STORED)
        self._require_attached("run()")
        return capture_inputs(self, texts, decoder_texts, batch_size,
                              input_features=input_features,
                              decoder_input_ids=decoder_input_ids, truncate=truncate, meta=meta)

    def run_ids(self, input_ids=None, decoder_input_ids=None, *, input_features=None) -> Capture:
        """One eval-mode, cache-free forward of right-padded id rows (``input_ids`` for the
        encoder, or ``input_features`` for Whisper; ``decoder_input_ids``, default the decoder
        start token alone); its Capture.
        """
        self._require_attached("run_ids()")
        device = device_of(self.model)
        inputs = {}
        if input_ids is not None:
            inputs["input_ids"], inputs["attention_mask"] = pad(
                [list(r) for r in input_ids], pad_id_of(self.tokenizer)
                if self.tokenizer is not None else self.decoder_pad(), device)
            n = len(input_ids)
        elif input_features is not None:
            features = torch.as_tensor(input_features)
            inputs["input_features"] = features.to(device, next(self.model.parameters()).dtype)
            n = features.shape[0]
        else:
            raise InputError("run_ids() needs input_ids (token id rows) or input_features")
        if decoder_input_ids is None:
            decoder_input_ids = [[self.decoder_start()]] * n
        dec_ids, dec_mask = pad([list(r) for r in decoder_input_ids], self.decoder_pad(), device)
        return capture_forward(self, **inputs, decoder_input_ids=dec_ids,
                               decoder_attention_mask=dec_mask)

    def run_to_file(self, *args, **kwargs):
        """Not available yet: encoder-decoder captures cannot be written to a run file
        (:class:`~probe.errors.UnsupportedModelError`, as ``AttentionProbe.run_to_file``'s
        counterpart)."""
        raise UnsupportedModelError(_NOT_STORED)
