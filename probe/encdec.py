"""`EncoderDecoderProbe`: exact attention capture for encoder-decoders (T5, BART, Whisper).

An encoder-decoder has three kinds of attention, each captured under its own keys
(:mod:`probe.names`): the encoder's self-attention ``encoder.blocks.{l}.attn.*``, the
decoder's causal self-attention ``decoder.blocks.{l}.attn.*`` and the decoder's
cross-attention ``decoder.blocks.{l}.cross_attn.*``, whose keys and values are encoder tokens
(axis ``source``: a cross-attention pattern is ``[head, query (decoder token), source (encoder
token)]``).

The mechanics are those of :class:`probe.capture.AttentionProbe` (a registered attention
backend, its eager mask function, hooks that exist only inside the ``with`` block, the model's
own implementation restored on exit), with a backend of its own, ``probe_encdec``, that also
reproduces T5's additive relative position bias: ``scores = q k^T * scaling + position_bias +
mask`` (T5's scaling is 1.0), in the order of the model's own eager function, so ``pattern``
equals ``output_attentions`` exactly. Padding is removed per stack: encoder tokens with the
encoder's 2D ``attention_mask``, decoder tokens with ``decoder_attention_mask``; where the
model masks nothing (Whisper's encoder ignores any mask) every position is kept.

Captures live in memory only; writing encoder-decoder runs to HDF5 is not supported yet.

>>> import torch, transformers as T
>>> model = T.T5Model(T.T5Config(vocab_size=64, d_model=16, num_layers=1, num_heads=2, d_kv=8,
...                              d_ff=16)).eval()
>>> with EncoderDecoderProbe(model) as p:
...     caps = p.run_ids([[5, 6, 7, 1]], [[0, 9]])
>>> caps[0]["decoder.blocks.0.cross_attn.pattern"].shape  # head, decoder token, encoder token
(2, 2, 4)
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from . import names
from .architectures import encoder_decoder_layers
from .attention import additive_mask, masked_positions, repeat_kv, value_norms, value_weighted
from .backends import REGISTRY, restore, switch_to
from .captures import Capture, Example
from .errors import InputError, ProbeError, UnsupportedModelError
from .inputs import batches_by_length, device_of, encode, max_length_of, no_cache, pad, pad_id_of
from .recording import spans_of, to_numpy

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
    entry = REGISTRY.entry(module)  # (probe, stack, site, layer)
    if entry is not None:
        probe, stack, site, layer = entry
        probe._record(stack, site, layer, query, key, value, scores, pattern, z, mask,
                      facts={"scaling": scaling, "position_bias": position_bias is not None
                             and bool(position_bias.detach().abs().max() > 0)})
    return z.transpose(1, 2).contiguous(), pattern


REGISTRY.define(BACKEND, _encdec_attention)


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


class EncoderDecoderProbe:
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

    def __init__(self, model, tokenizer=None, *, layers=None, keys=None):
        self.model = model
        self.tokenizer = tokenizer
        self.layers = encoder_decoder_layers(model)  # raises UnsupportedModelError early
        self.exposed_keys, self._plan = self._selection(layers, keys)
        self.captures: list[Capture] = []
        #: per site prefix (``"decoder.blocks.0.cross_attn"``): scaling and position bias seen
        self.layer_facts: dict[str, dict] = {}
        self._pending: dict[tuple, dict[str, torch.Tensor]] = {}  # (stack, site, layer): tensors
        self._call: dict = {}
        self._handles = []
        self._attached = False
        self._original_impl = None
        self._forward_options = no_cache(model)

    # ----------------------------------------------------------------- selection
    def _selection(self, layers, keys):
        sites = self.layers.sites()
        counts = {(stack, site): len(ls) for stack, site, ls in sites}
        n_max = max(counts.values())
        if layers is None:
            chosen = None
        else:
            chosen = []
            for layer in ([layers] if isinstance(layers, int) else layers):
                if not -n_max <= int(layer) < n_max:
                    raise InputError(f"layer {layer} does not exist: the stacks have layers "
                                     f"0..{n_max - 1}")
                chosen.append(int(layer))

        def in_stack(n):  # the chosen layers that exist in a stack of n layers
            if chosen is None:
                return list(range(n))
            return sorted({c % n for c in chosen if -n <= c < n})

        default = tuple(c for c in names.COMPONENTS if c != "sink")
        triples = []
        for item in ([keys] if isinstance(keys, str) else (keys or default)):
            if not isinstance(item, str):
                raise InputError(f"keys must be component names or full keys (strings), got "
                                 f"{item!r}; components: {', '.join(names.COMPONENTS)}")
            if "." in item:
                parts = names.parse_key(item)
                if parts.stack is None:
                    raise InputError(
                        f"{item!r}: an encoder-decoder's keys name their stack, e.g. "
                        f"'encoder.{item}', 'decoder.{item}' or "
                        f"'decoder.{item.replace('.attn.', '.cross_attn.')}'")
                n = counts[(parts.stack, parts.site)]
                if parts.layer >= n:
                    raise InputError(f"{item!r}: the {parts.stack} has layers 0..{n - 1}")
                if chosen is None or parts.layer in in_stack(n):
                    triples.append((parts.stack, parts.site, parts.layer, parts.component))
            else:
                names.normalize_components([item])
                for stack, site, ls in sites:
                    triples.extend((stack, site, layer, item) for layer in in_stack(len(ls)))
        if not triples:
            raise InputError("the selection of layers and keys is empty")
        order = {(stack, site): i for i, (stack, site, _) in enumerate(sites)}
        triples = sorted(set(triples), key=lambda t: (order[t[:2]], t[2],
                                                      names.COMPONENTS.index(t[3])))
        exposed = [names.key(layer, c, stack=stack, site=site) for stack, site, layer, c in triples]
        plan: dict[tuple, set[str]] = {}
        for stack, site, layer, c in triples:
            plan.setdefault((stack, site, layer), set()).update(names.required_components([c]))
        return exposed, {k: frozenset(cs) for k, cs in plan.items()}

    @property
    def stored_keys(self):
        """Not available: encoder-decoder captures cannot be written to a run file yet."""
        raise UnsupportedModelError(_NOT_STORED)

    # ----------------------------------------------------------------- attach / detach
    def __enter__(self) -> EncoderDecoderProbe:
        self.attach()
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def _all_layers(self):
        for stack, site, layers in self.layers.sites():
            for layer in layers:
                yield stack, site, layer

    def attach(self) -> EncoderDecoderProbe:
        """Register the backend and hooks (prefer ``with EncoderDecoderProbe(...)``)."""
        if self._attached:
            raise ProbeError("this probe is already attached")
        REGISTRY.acquire(BACKEND, self.model, "an EncoderDecoderProbe")
        self._attached = True
        try:
            self._original_impl = self.model.config._attn_implementation
            for stack, site, layer in self._all_layers():
                REGISTRY.bind(layer.module, (self, stack, site, layer))
            switch_to(self.model, BACKEND,
                      [(layer.name, layer.module) for _, _, layer in self._all_layers()])
            for which, module in (("encoder", self.layers.encoder_stack),
                                  ("decoder", self.layers.decoder_stack)):
                self._handles.append(module.register_forward_pre_hook(
                    lambda m, a, k, which=which: self._before_stack(which, m, a, k),
                    with_kwargs=True))
            self._handles.append(self.model.register_forward_pre_hook(
                self._before_forward, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(
                self._after_forward, with_kwargs=True))
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        """Remove everything the probe added and restore the attention implementation."""
        if not self._attached:
            return
        try:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            for _, _, layer in self._all_layers():
                REGISTRY.unbind(layer.module, owner=self)
            restore(self.model, self._original_impl)
        finally:
            self._pending.clear()
            self._call = {}
            self._attached = False
            REGISTRY.release(BACKEND, self.model)

    # ----------------------------------------------------------------- recording
    def _before_forward(self, module, args, kwargs):
        self._pending, self._call = {}, {"stacks": {}, "masked": {}, "width": {}}

    def _before_stack(self, which, module, args, kwargs):
        got = _arguments(module, args, kwargs)
        ids = got.get("input_ids")
        self._call.setdefault("stacks", {})[which] = {
            "input_ids": ids if torch.is_tensor(ids) else None,
            "attention_mask": got.get("attention_mask"),
            "encoder_attention_mask": got.get("encoder_attention_mask"),
        }

    def _record(self, stack, site, layer, query, key, value, scores, pattern, z, mask, facts):
        prefix = f"{stack}.blocks.{layer.index}.{site}"
        self.layer_facts[prefix] = facts
        if site == "attn" and query.shape[-2] != key.shape[-2]:
            raise ProbeError(
                f"{prefix}: {query.shape[-2]} queries against {key.shape[-2]} keys (a key/value "
                "cache is in use); probe captures full forward passes only: call the model with "
                "use_cache=False and without past_key_values")
        call = self._call
        call.setdefault("masked", {})[(stack, site)] = mask is not None
        call.setdefault("width", {})[(stack, site)] = (query.shape[-2], key.shape[-2])
        wanted = self._plan.get((stack, site, layer.index))
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

    def _after_forward(self, module, args, kwargs, output):
        pending, call = self._pending, self._call
        self._pending, self._call = {}, {}
        if not pending:
            return None
        missing = [f"{s}.blocks.{i}.{t}" for s, t, i in sorted(set(self._plan) - set(pending))]
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
        stacks, masked, width = call.get("stacks", {}), call["masked"], call["width"]
        enc_in, dec_in = stacks.get("encoder", {}), stacks.get("decoder", {})
        n_enc = (width.get(("encoder", "attn")) or width[("decoder", "cross_attn")][::-1])[0]
        n_dec = (width.get(("decoder", "attn")) or width[("decoder", "cross_attn")])[0]

        def spans(mask, used, n):
            return spans_of(mask if used else None, batch, n)

        enc_spans = spans(enc_in.get("attention_mask"), masked.get(("encoder", "attn")), n_enc)
        dec_spans = spans(dec_in.get("attention_mask"), masked.get(("decoder", "attn"), True),
                          n_dec)
        src_mask = dec_in.get("encoder_attention_mask")
        if src_mask is None:
            src_mask = enc_in.get("attention_mask")
        if ("decoder", "cross_attn") in masked:
            src_spans = spans(src_mask, masked[("decoder", "cross_attn")], n_enc)
        else:
            src_spans = enc_spans
        enc_ids, dec_ids = (None if d.get("input_ids") is None
                            else d["input_ids"].detach().cpu().numpy() for d in (enc_in, dec_in))
        examples = [self._example(arrays, row, enc_spans[row], dec_spans[row], src_spans[row],
                                  enc_ids, dec_ids) for row in range(batch)]
        self.captures.append(Capture(examples, self.exposed_keys))
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
            tokens(enc_ids, enc), self.exposed_keys, get,
            input_ids=None if enc_ids is None else enc_ids[row, enc[0]:enc[1]],
            decoder_tokens=tokens(dec_ids, dec),
            decoder_input_ids=None if dec_ids is None else dec_ids[row, dec[0]:dec[1]],
            n_source=enc[1] - enc[0])

    # ----------------------------------------------------------------- user API
    @property
    def last(self) -> Capture:
        """The capture of the latest forward call."""
        if not self.captures:
            raise ProbeError("nothing captured yet: call the model inside the with-block first")
        return self.captures[-1]

    def clear(self) -> None:
        """Forget what was captured so far (frees the memory)."""
        self.captures.clear()

    def _require_attached(self):
        if not self._attached:
            raise ProbeError("run() needs an attached probe: use "
                             "`with EncoderDecoderProbe(...) as p:`")

    def decoder_start(self) -> int:
        """The id the decoder starts from (``decoder_start_token_id``)."""
        for source in (getattr(self.model, "generation_config", None), self.model.config):
            value = getattr(source, "decoder_start_token_id", None)
            if isinstance(value, int):
                return value
        raise InputError(f"{type(self.model).__name__} has no decoder_start_token_id in its "
                         "config or generation config; pass decoder_input_ids explicitly")

    def _decoder_pad(self) -> int:
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
        self._require_attached()
        if (texts is None) == (input_features is None):
            raise InputError("run() needs exactly one encoder input: texts (a list of strings) "
                             "or input_features (Whisper: [example, mel, frame])")
        enc_rows, features, texts_ = None, None, None
        if texts is not None:
            if self.tokenizer is None:
                raise InputError("run(texts) needs a tokenizer: EncoderDecoderProbe(model, "
                                 "tokenizer)")
            texts_ = [texts] if isinstance(texts, str) else list(texts)
            enc_rows = encode(self.tokenizer, texts_, truncate=truncate,
                              max_length=max_length_of(self.model, self.tokenizer)).ids
            n = len(enc_rows)
        else:
            features = torch.as_tensor(np.asarray(input_features))
            if features.dim() != 3:
                raise InputError("input_features must be [example, mel, frame], got shape "
                                 f"{tuple(features.shape)}")
            n = features.shape[0]
        dec_rows = self._decoder_rows(n, decoder_texts, decoder_input_ids)
        if meta is not None and len(meta) != n:
            raise InputError(f"meta has {len(meta)} entries for {n} inputs")
        lengths = [len(r) for r in enc_rows] if enc_rows is not None else [len(r) for r in dec_rows]
        examples = [None] * n
        for rows in batches_by_length(lengths, batch_size):
            capture = self.run_ids(
                None if enc_rows is None else [enc_rows[i] for i in rows],
                [dec_rows[i] for i in rows],
                input_features=None if features is None else features[rows])
            for j, i in enumerate(rows):
                ex = capture[j]
                ex.index, ex.meta = i, dict(meta[i]) if meta is not None else {}
                ex.text = texts_[i] if texts_ is not None else None
                ex.decoder_text = decoder_texts[i] if decoder_texts is not None else None
                examples[i] = ex
        return Capture(examples, self.exposed_keys)

    def _decoder_rows(self, n, decoder_texts, decoder_input_ids) -> list[list[int]]:
        if decoder_input_ids is not None:
            if decoder_texts is not None:
                raise InputError("give decoder_texts or decoder_input_ids, not both")
            rows = [list(map(int, r)) for r in decoder_input_ids]
        elif decoder_texts is not None:
            if isinstance(decoder_texts, str):
                raise InputError("decoder_texts must be a list of strings, one per input; wrap "
                                 "it: [text]")
            if self.tokenizer is None:
                raise InputError("decoder_texts need a tokenizer: EncoderDecoderProbe(model, "
                                 "tokenizer)")
            labels = encode(self.tokenizer, list(decoder_texts), max_length=None).ids
            rows = [[self.decoder_start()] + row[:-1] for row in labels]
        else:
            rows = [[self.decoder_start()] for _ in range(n)]
        if len(rows) != n:
            raise InputError(f"{len(rows)} decoder inputs for {n} encoder inputs; give one each")
        if any(len(r) == 0 for r in rows):
            raise InputError("a decoder input is empty: give at least one token id")
        return rows

    def run_ids(self, input_ids=None, decoder_input_ids=None, *, input_features=None) -> Capture:
        """One eval-mode, cache-free forward of right-padded id rows (``input_ids`` for the
        encoder, or ``input_features`` for Whisper; ``decoder_input_ids``, default the decoder
        start token alone); its Capture.
        """
        self._require_attached()
        device = device_of(self.model)
        inputs = {}
        if input_ids is not None:
            inputs["input_ids"], inputs["attention_mask"] = pad(
                [list(r) for r in input_ids], pad_id_of(self.tokenizer)
                if self.tokenizer is not None else self._decoder_pad(), device)
            n = len(input_ids)
        elif input_features is not None:
            features = torch.as_tensor(input_features)
            inputs["input_features"] = features.to(device, next(self.model.parameters()).dtype)
            n = features.shape[0]
        else:
            raise InputError("run_ids() needs input_ids (token id rows) or input_features")
        if decoder_input_ids is None:
            decoder_input_ids = [[self.decoder_start()]] * n
        dec_ids, dec_mask = pad([list(r) for r in decoder_input_ids], self._decoder_pad(), device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                self.model(**inputs, decoder_input_ids=dec_ids, decoder_attention_mask=dec_mask,
                           **self._forward_options)
        finally:
            self.model.train(was_training)
        return self.captures.pop()

    def run_to_file(self, *args, **kwargs):
        """Not available yet: encoder-decoder captures cannot be written to a run file
        (:class:`~probe.errors.UnsupportedModelError`, as ``AttentionProbe.run_to_file``'s
        counterpart)."""
        raise UnsupportedModelError(_NOT_STORED)
