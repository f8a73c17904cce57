"""`AttentionProbe`: capture every attention internal of a transformers model, exactly.

How it works. transformers (v5) models look up their attention function by name on every
call (``config._attn_implementation``). On entering, the probe registers one more attention
backend, ``probe_capture``, together with the eager mask function it needs (a backend without a
mask function silently gets no mask), switches the model to it and registers two hooks on the
model (one to read the call's attention mask, one to collect the results). The backend computes
eager attention step by step (:func:`probe.attention.attend`) and records the tensors of the
layers it was asked for. On leaving, even through an exception, the hooks are removed and the
model's own attention implementation is restored, so the model is exactly as it was.

>>> from probe import AttentionProbe, load_model
>>> model, tokenizer = load_model()
>>> with AttentionProbe(model, tokenizer) as p:
...     caps = p.run(["A robin is a bird.", "A robin is not a bird."])
>>> ex = caps[1]
>>> ex.tokens[:4], ex["blocks.3.attn.pattern"].shape
(['[CLS]', 'a', 'robin', 'is'], (12, 9, 9))
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from . import names
from .architectures import AttentionLayer, attention_layers
from .attention import (additive_mask, attend_with_sink, check_output_weight, masked_positions,
                        repeat_kv, value_norm_factor, value_norms_with)
from .captures import Capture, CapturedBatch
from .errors import InputError, ProbeError, UnsupportedModelError
from .inputs import batches_by_length, encode, max_length_of, pad, pad_id_of

BACKEND = "probe_capture"

# id(attention module) -> (probe, layer): which probe records which module's calls
_ACTIVE: dict[int, tuple[AttentionProbe, AttentionLayer]] = {}
_ATTACHED_MODELS: set[int] = set()
_LOCK = threading.Lock()
_backend_users = 0

# keyword arguments of the attention interface that change the math in ways probe does not
# model (captures would be wrong); soft-capping (`softcap`) and gpt-oss sinks (`s_aux`) are modelled
_UNSUPPORTED_KWARGS = ("position_bias", "sinks", "sink_scale")


def _probe_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     softcap=None, s_aux=None, **kwargs):
    """The ``probe_capture`` attention backend: eager attention that records its steps."""
    for name in _UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise UnsupportedModelError(
                f"{type(module).__name__} passes {name!r} to its attention function; probe does "
                "not model that variant, so its captures would be wrong"
            )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    mask = additive_mask(attention_mask, query.dtype)
    if mask is not None and mask.shape[-1] != key.shape[-2]:
        mask = mask[..., : key.shape[-2]]
    scores, pattern, z, sink = attend_with_sink(query, key, value, mask, scaling,
                                                softcap=softcap, sinks=s_aux)
    if dropout and module.training:
        dropped = torch.nn.functional.dropout(pattern, p=dropout, training=True)
        z = torch.matmul(dropped, repeat_kv(value, query.shape[1]))
    entry = _ACTIVE.get(id(module))
    if entry is not None:
        probe, layer = entry
        layer = probe._layer_of_call(layer)  # a shared module (ALBERT) serves several layers
        if probe.intervention is not None:  # probe.patching: may replace pattern and/or z
            changed = probe.intervention(layer.index, pattern, value, z)
            if changed is not None:
                pattern, z = changed
        probe._record(layer, query, key, value, scores, pattern, z, mask, sink=sink,
                      facts={"scaling": scaling, "softcap": softcap, "sink": s_aux is not None,
                             "sliding_window": kwargs.get("sliding_window")})
    return z.transpose(1, 2).contiguous(), pattern


def _use_backend():
    global _backend_users
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    with _LOCK:
        if _backend_users == 0:
            AttentionInterface.register(BACKEND, _probe_attention)
            AttentionMaskInterface.register(BACKEND, eager_mask)
        _backend_users += 1


def _release_backend():
    global _backend_users
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    with _LOCK:
        _backend_users -= 1
        if _backend_users == 0:
            AttentionInterface._global_mapping.pop(BACKEND, None)
            AttentionMaskInterface._global_mapping.pop(BACKEND, None)


def _spans(attention_mask, batch: int, width: int) -> list[tuple[int, int]]:
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


class _ValueNormFactors:
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

    def get(self, layer: AttentionLayer, n_heads: int, d_head: int, v: torch.Tensor):
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


class AttentionProbe:
    """Capture Q, K, V, scores, pattern, z and value-weighted attention per layer and head.

    Parameters
    ----------
    model: a transformers model of a supported family (see :mod:`probe.architectures`).
    tokenizer: needed by :meth:`run` and to label tokens; optional otherwise.
    layers: layer indices to capture (negative counts from the end); default all.
    keys: what to capture: component names (``"pattern"``, ``"q"``, ...; see
        :data:`probe.names.COMPONENTS`) applied to every chosen layer, and/or full keys such as
        ``"blocks.3.attn.z"``. Default: every component.

    Use it as a context manager; hooks exist only inside the ``with`` block. Inside, either
    call :meth:`run` on texts, or call the model yourself and read :attr:`captures`
    (one :class:`~probe.captures.Capture` per forward call, padding removed using the
    call's 2D ``attention_mask``).
    """

    def __init__(self, model, tokenizer=None, *, layers=None, keys=None):
        self.model = model
        self.tokenizer = tokenizer
        self.layers = attention_layers(model)  # raises UnsupportedModelError early
        self.exposed_keys, self._plan = self._selection(layers, keys)
        self.captures: list[Capture] = []
        self._pending: dict[int, dict[str, torch.Tensor]] = {}
        self._call: dict = {}
        self._handles = []
        self._attached = False
        self._original_impl = None
        self._forward_options = _no_cache(model)
        self._value_factors = _ValueNormFactors()
        #: per layer, what the model passed to its attention function (scaling, soft-cap, ...)
        self.layer_facts: dict[int, dict] = {}
        #: None, or ``f(layer, pattern, value, z) -> None | (pattern, z)`` called by the
        #: backend after each layer's attention (interventions, :mod:`probe.patching`)
        self.intervention = None

    # ----------------------------------------------------------------- selection
    def _selection(self, layers, keys):
        n = len(self.layers)
        if layers is None:
            chosen = list(range(n))
        else:
            chosen = []
            for layer in ([layers] if isinstance(layers, int) else layers):
                if not -n <= int(layer) < n:
                    raise InputError(f"layer {layer} does not exist: the model has layers 0..{n - 1}")
                chosen.append(int(layer) % n)
        pairs = []
        # `sink` by default only for models with learned sinks (zeros elsewhere: no information)
        has_sinks = any(getattr(layer.module, "sinks", None) is not None for layer in self.layers)
        default = tuple(c for c in names.COMPONENTS if c != "sink" or has_sinks)
        for item in ([keys] if isinstance(keys, str) else (keys or default)):
            if not isinstance(item, str):
                raise InputError(f"keys must be component names or full keys (strings), got {item!r}; "
                                 f"components: {', '.join(names.COMPONENTS)}")
            if item.startswith("blocks."):
                layer, component = names.parse_key(item)
                if layer >= n:
                    raise InputError(f"{item!r}: the model has layers 0..{n - 1}")
                pairs.append((layer, component))
            else:
                names.normalize_components([item])
                pairs.extend((layer, item) for layer in chosen)
        if layers is not None and keys is not None:
            pairs = [(layer, c) for layer, c in pairs if layer in chosen]
        if not pairs:
            raise InputError("the selection of layers and keys is empty")
        pairs = sorted(set(pairs), key=lambda lc: (lc[0], names.COMPONENTS.index(lc[1])))
        exposed = [names.key(layer, c) for layer, c in pairs]
        plan: dict[int, set[str]] = {}
        for layer, c in pairs:
            plan.setdefault(layer, set()).update(names.required_components([c]))
        return exposed, {layer: frozenset(cs) for layer, cs in plan.items()}

    @property
    def stored_keys(self) -> tuple[str, ...]:
        """The keys actually captured (derived keys replaced by what they are derived from)."""
        return tuple(names.key(layer, c) for layer, cs in sorted(self._plan.items())
                     for c in names.COMPONENTS if c in cs)

    # ----------------------------------------------------------------- attach / detach
    def __enter__(self) -> AttentionProbe:
        self.attach()
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def attach(self) -> AttentionProbe:
        """Register the backend and hooks (prefer ``with AttentionProbe(...)``)."""
        if self._attached:
            raise ProbeError("this probe is already attached")
        if id(self.model) in _ATTACHED_MODELS:
            raise ProbeError("another AttentionProbe is already attached to this model; "
                             "leave its with-block first")
        _use_backend()
        _ATTACHED_MODELS.add(id(self.model))
        self._attached = True
        try:
            self._original_impl = self.model.config._attn_implementation
            for layer in self.layers:
                _ACTIVE[id(layer.module)] = (self, layer)
            self.model.set_attn_implementation(BACKEND)
            stuck = [layer.name for layer in self.layers
                     if getattr(getattr(layer.module, "config", self.model.config),
                                "_attn_implementation", None) != BACKEND]
            if self.model.config._attn_implementation != BACKEND or stuck:
                raise UnsupportedModelError(
                    f"{type(self.model).__name__} did not accept a new attention implementation "
                    f"(its attention does not go through transformers' AttentionInterface"
                    f"{'; modules ' + ', '.join(stuck[:3]) if stuck else ''}); probe cannot "
                    "capture it exactly"
                )
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
            for layer in self.layers:
                if _ACTIVE.get(id(layer.module), (None,))[0] is self:
                    del _ACTIVE[id(layer.module)]
            if (self._original_impl is not None
                    and self.model.config._attn_implementation != self._original_impl):
                self.model.set_attn_implementation(self._original_impl)
        finally:
            self._pending.clear()
            self._call = {}
            _ATTACHED_MODELS.discard(id(self.model))
            self._attached = False
            _release_backend()

    # ----------------------------------------------------------------- recording
    def _before_forward(self, module, args, kwargs):
        self._pending = {}
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._call = {"input_ids": ids if torch.is_tensor(ids) else None,
                      "attention_mask": kwargs.get("attention_mask")}

    def _layer_of_call(self, layer):
        """The layer this call of ``layer.module`` computes: the k-th call of a module shared by
        several layers (ALBERT) in one forward is its k-th layer; otherwise ``layer`` itself."""
        uses = [u for u in self.layers if u.module is layer.module]
        if len(uses) == 1:
            return layer
        counts = self._call.setdefault("calls", {})
        k = counts.get(id(layer.module), 0)
        counts[id(layer.module)] = k + 1
        return uses[k % len(uses)]

    def _record(self, layer, query, key, value, scores, pattern, z, mask, sink=None, facts=None):
        if facts is not None:  # what the model passed to its attention function, per layer
            self.layer_facts[layer.index] = facts
        wanted = self._plan.get(layer.index)
        if not wanted:
            return
        if query.shape[-2] != key.shape[-2]:
            raise ProbeError(
                f"layer {layer.index}: {query.shape[-2]} queries against {key.shape[-2]} keys "
                "(a key/value cache is in use); probe captures full forward passes only: call "
                "the model with use_cache=False and without past_key_values"
            )
        got = {}
        if "q" in wanted:
            got["q"] = query
        if "k" in wanted:
            got["k"] = key
        if "v" in wanted:
            got["v"] = value
        if "scores" in wanted:
            got["scores"] = scores if mask is None else self._fill_masked(scores, mask)
        if "pattern" in wanted:
            got["pattern"] = pattern
        if "z" in wanted:
            got["z"] = z
        if "value_norm" in wanted:
            factor = self._value_factors.get(layer, query.shape[1], value.shape[-1], value)
            got["value_norm"] = value_norms_with(value.detach(), factor)
        if "sink" in wanted:
            got["sink"] = sink if sink is not None else pattern.new_zeros(pattern.shape[:-1])
        self._pending[layer.index] = {c: t.detach() for c, t in got.items()}

    def _fill_masked(self, scores, mask):
        """Scores with masked entries set to -inf, in place: after the softmax the backend's
        scores tensor serves only this capture (the softmax saved its output, not its input).
        The boolean positions are made once per mask per forward call (layers share masks)."""
        cache = self._call.setdefault("masked", [])
        for held, positions in cache:  # `held` keeps the mask alive, so its address is unique
            if (held.data_ptr() == mask.data_ptr() and held.shape == mask.shape
                    and held.stride() == mask.stride() and held.dtype == mask.dtype):
                break
        else:
            positions = masked_positions(mask)
            cache.append((mask, positions))
            del cache[:-4]  # bounded, even for calls that bypass the model's forward hooks
        if scores.requires_grad:
            return scores.masked_fill(positions, float("-inf"))
        return scores.masked_fill_(positions, float("-inf"))

    def _after_forward(self, module, args, kwargs, output):
        pending, call = self._pending, self._call
        self._pending, self._call = {}, {}
        if not pending:
            return None
        missing = sorted(set(self._plan) - set(pending))
        if missing:
            raise UnsupportedModelError(
                f"layers {missing} were not seen by the probe's attention backend during this "
                "forward call; this model routes some attention around transformers' "
                "AttentionInterface, so probe cannot capture it"
            )
        arrays = {}
        for layer, tensors in pending.items():
            for component, tensor in tensors.items():
                arrays[names.key(layer, component)] = _to_numpy(tensor)
        first = next(iter(arrays.values()))
        batch, width = first.shape[0], first.shape[2]
        spans = _spans(call.get("attention_mask"), batch, width)
        ids = call.get("input_ids")
        ids = None if ids is None else ids.detach().cpu().numpy()
        tokens = None
        if ids is not None and self.tokenizer is not None:
            tokens = [self.tokenizer.convert_ids_to_tokens(ids[row, a:b].tolist())
                      for row, (a, b) in enumerate(spans)]
        batch_capture = CapturedBatch(arrays, spans, tokens, keys=self.exposed_keys, input_ids=ids)
        self.captures.append(Capture([batch_capture.example(i) for i in range(batch)],
                                     self.exposed_keys, batch=batch_capture))
        return None

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

    def run(self, texts, batch_size: int = 32, *, truncate: bool = False, meta=None,
            ids=None, out=None, **store_options):
        """Capture ``texts``: one :class:`~probe.captures.Example` per text, in input order.

        Texts are batched by length (less padding) and right-padded; the model runs in eval
        mode under ``torch.inference_mode`` without a key/value cache. A text longer than the
        model's maximum is refused unless ``truncate=True``. ``meta`` (one dict per text) and
        ``ids`` are attached to the examples.

        With ``out="run.h5"`` the captures stream to an HDF5 file instead of memory and the
        opened :class:`~probe.store.Run` is returned; ``store_options`` are those of
        :func:`probe.runner.capture_to_file` (dtype, compression, resume, window, progress).
        """
        self._require_attached()
        if self.tokenizer is None:
            raise InputError("run() needs a tokenizer: AttentionProbe(model, tokenizer)")
        from .readers import records_from_texts

        texts = [texts] if isinstance(texts, str) else list(texts)
        records = list(records_from_texts(texts, meta, ids))
        if out is not None:
            from .runner import capture_to_file

            return capture_to_file(self, lambda: iter(records), out, batch_size=batch_size,
                                   truncate=truncate, **store_options)
        encoded = encode(self.tokenizer, texts, max_length=max_length_of(self.model, self.tokenizer),
                         truncate=truncate, ids=ids)
        examples = [None] * len(texts)
        for rows in batches_by_length([len(r) for r in encoded.ids], batch_size):
            capture = self._capture_ids([encoded.ids[i] for i in rows])
            for j, i in enumerate(rows):
                ex = capture[j]
                ex.text, ex.index, ex.meta = texts[i], i, dict(records[i].meta)
                if encoded.truncated[i]:
                    ex.meta["truncated"] = True
                examples[i] = ex
        return Capture(examples, self.exposed_keys)

    def _require_attached(self):
        if not self._attached:
            raise ProbeError("run() needs an attached probe: use `with AttentionProbe(...) as p:`")

    def _capture_ids(self, rows: list[list[int]]) -> Capture:
        """One eval-mode, cache-free forward of right-padded token id rows; its Capture."""
        self._require_attached()
        input_ids, mask = pad(rows, pad_id_of(self.tokenizer), _device_of(self.model))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                self.model(input_ids=input_ids, attention_mask=mask, **self._forward_options)
        finally:
            self.model.train(was_training)
        return self.captures.pop()


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.cpu().numpy()


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _no_cache(model) -> dict:
    """``use_cache=False`` where the model's forward takes it (decoders)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"use_cache": False} if "use_cache" in params else {}
