"""`AttentionProbe`: capture every attention internal of a transformers model, exactly.

How it works. transformers (v5) models look up their attention function by name on every
call (``config._attn_implementation``). On entering, the probe registers one more attention
backend, ``probe_capture``, together with the eager mask function it needs (a backend without a
mask function silently gets no mask; :mod:`probe.backends` keeps both registrations), switches
the model to it and registers two hooks on the model (one to read the call's attention mask,
one to collect the results, :class:`probe.recording.Recorder`). The backend computes eager
attention step by step (:func:`probe.attention.attend`) and records the tensors of the layers
it was asked for (nothing inside ``with p.paused():``). On leaving, even through an exception,
the hooks are removed and the model's own attention implementation is restored, so the model
is exactly as it was.

This module's one job is that backend and one forward-and-capture call,
:meth:`AttentionProbe.capture_ids` (and its streaming twin, ``stream_ids``). Attaching and
detaching are :class:`probe.lifecycle.ProbeLifecycle`'s, choosing keys and heads
:mod:`probe.selection`'s, batching texts :mod:`probe.batching`'s, writing run files
:mod:`probe.runner`'s; :meth:`AttentionProbe.run` and :meth:`AttentionProbe.run_to_file` are
their shortcuts. It imports :mod:`probe.lifecycle`, :mod:`probe.recording`,
:mod:`probe.selection`, :mod:`probe.backends`, :mod:`probe.names`, :mod:`probe.architectures`,
:mod:`probe.attention`, :mod:`probe.captures`, :mod:`probe.errors` and :mod:`probe.inputs`
(and, inside the shortcuts, :mod:`probe.batching`, :mod:`probe.readers` and
:mod:`probe.runner`).

>>> from probe import AttentionProbe, load_model
>>> model, tokenizer = load_model()
>>> with AttentionProbe(model, tokenizer) as p:
...     caps = p.run(["A robin is a bird.", "A robin is not a bird."])
>>> ex = caps[1]
>>> ex.tokens[:4], ex["blocks.3.attn.pattern"].shape
(['[CLS]', 'a', 'robin', 'is'], (12, 9, 9))
"""

from __future__ import annotations

import contextlib

import torch

from . import names
from .architectures import attention_layers
from .attention import additive_mask, attend_in_blocks, attend_with_sink, repeat_kv
from .backends import REGISTRY
from .captures import Capture
from .errors import InputError, UnsupportedModelError
from .inputs import device_of, pad, pad_id_of
from .lifecycle import ProbeLifecycle, capture_forward, run_forward
from .recording import Recorder, head_picker
from .selection import heads_per_layer, narrowed_heads, parse_heads, select_keys

BACKEND = "probe_capture"

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
    entry = REGISTRY.entry(module)
    probe = layer = None
    if entry is not None:
        probe, layer = entry
        layer = probe._recorder.layer_of_call(layer)  # a shared module (ALBERT): several layers
    block = _query_block(probe, module, query, key, dropout)
    if block:  # a long sequence: one block of rows' scores and pattern at a time
        scores, pattern, z, sink = _attend_kept_in_blocks(
            probe._recorder, layer.index, query, key, value, mask, scaling, softcap, s_aux, block)
    else:
        scores, pattern, z, sink = attend_with_sink(query, key, value, mask, scaling,
                                                    softcap=softcap, sinks=s_aux)
        if dropout and module.training:
            dropped = torch.nn.functional.dropout(pattern, p=dropout, training=True)
            z = torch.matmul(dropped, repeat_kv(value, query.shape[1]))
    if probe is not None:
        if not probe._recorder.keeps(layer.index, "scores"):
            scores = None  # a pattern-sized tensor freed before the layer is recorded
        if probe.intervention is not None:  # probe.patching: may replace pattern and/or z
            changed = probe.intervention(layer.index, pattern, value, z)
            if changed is not None:
                pattern, z = changed
        probe._record(layer, query, key, value, scores, pattern, z, mask, sink=sink,
                      facts={"scaling": scaling, "softcap": softcap, "sink": s_aux is not None,
                             "sliding_window": kwargs.get("sliding_window")},
                      heads_cut=bool(block))
    # in blocks, no whole pattern of every head exists: the model gets none (as from sdpa)
    return z.transpose(1, 2).contiguous(), None if block else pattern


REGISTRY.define(BACKEND, _probe_attention)

#: a layer whose scores would take more than this is computed over blocks of query rows
BLOCKS_ABOVE_BYTES = 64 << 20
#: the size of one block's scores (16 MiB blocks left 128 MiB in the malloc heap that 4 MiB
#: blocks do not: benchmarks/long_sequence.py)
BLOCK_BYTES = 4 << 20


def _query_block(probe, module, query, key, dropout) -> int | None:
    """Query rows a block when this call is computed in blocks (a captured layer whose scores
    exceed :data:`BLOCKS_ABOVE_BYTES`, with no intervention and no dropout), else None."""
    if probe is None or probe.intervention is not None or (dropout and module.training):
        return None
    batch, heads, n, _ = query.shape
    row = batch * heads * key.shape[-2] * query.element_size()  # one query row's scores
    if row * n <= BLOCKS_ABOVE_BYTES:
        return None
    return max(1, BLOCK_BYTES // row)


def _attend_kept_in_blocks(recorder, index, query, key, value, mask, scaling, softcap, sinks,
                           block):
    """Attention over query blocks (:func:`~probe.attention.attend_in_blocks`), keeping of
    scores and pattern only the heads the recorder captures (whole tensors of those heads
    alone; None when not captured). Returns ``scores, pattern, z, sink`` with scores, pattern
    and sink already cut to the recorded heads."""
    heads, _ = recorder.head_axes(index, query.shape[1], key.shape[1])
    pick = head_picker(heads, query.shape[1], query.device)  # the rule record() cuts by
    shape = (query.shape[0], len(heads), query.shape[2], key.shape[2])
    kept = {c: query.new_empty(shape) for c in ("scores", "pattern") if recorder.keeps(index, c)}

    def keep(start, stop, scores, pattern):
        for name, rows in (("scores", scores), ("pattern", pattern)):
            if name in kept:
                kept[name][:, :, start:stop] = pick(rows)

    z, sink = attend_in_blocks(query, key, value, mask, scaling, block=block, softcap=softcap,
                               sinks=sinks, on_block=keep)
    return kept.get("scores"), kept.get("pattern"), z, pick(sink)


class AttentionProbe(ProbeLifecycle):
    """Capture Q, K, V, scores, pattern, z and value-weighted attention per layer and head.

    Parameters
    ----------
    model: a transformers model of a supported family (see :mod:`probe.architectures`).
    tokenizer: needed by :meth:`run` and to label tokens; optional otherwise.
    layers: layer indices to capture (negative counts from the end); default all.
    keys: what to capture: component names (``"pattern"``, ``"q"``, ...; see
        :data:`probe.names.COMPONENTS`) applied to every chosen layer, and/or full keys such as
        ``"blocks.3.attn.z"``. Default: every component.
    heads: capture only some heads of some layers: ``"3.7,5.*"`` (LAYER.HEAD, ``*`` for every
        head), a list of such items or ``{layer: [heads]}``; a layer named here is captured with
        only these query heads (ascending), and its k and v with the key/value heads they read
        (grouped-query: ``h // (n_heads // n_kv_heads)``); other chosen layers keep every head.
        ``capture.heads[layer]`` and ``kv_heads`` say which head each head position holds.

    Use it as a context manager (:class:`~probe.lifecycle.ProbeLifecycle`). Inside, call
    :meth:`capture_ids` on token id rows, :meth:`run` on texts, :meth:`run_to_file`, or call the
    model yourself and read :attr:`captures` (one :class:`~probe.captures.Capture` per forward
    call, padding removed using its 2D ``attention_mask``); ``with p.paused():`` records nothing.
    """

    BACKEND = BACKEND

    def __init__(self, model, tokenizer=None, *, layers=None, keys=None, heads=None):
        super().__init__(model, tokenizer)
        self.layers = attention_layers(model)  # raises UnsupportedModelError early
        #: the head selection, ``{layer: query heads}`` (empty: every head of every layer)
        self.heads = parse_heads(heads, len(self.layers), heads_per_layer(model))
        self.exposed_keys, self._plan = select_keys(self.layers, layers, keys, self.heads)
        self._recorder = Recorder(self.layers, self._plan, self.exposed_keys, tokenizer,
                                  heads=self.heads)
        #: None, or ``f(layer, pattern, value, z) -> None | (pattern, z)`` called by the
        #: backend after each layer's attention (interventions, :mod:`probe.patching`)
        self.intervention = None

    @property
    def stored_keys(self) -> tuple[str, ...]:
        """The keys actually captured (derived keys replaced by what they are derived from)."""
        return tuple(names.key(layer, c) for layer, cs in sorted(self._plan.items())
                     for c in names.COMPONENTS if c in cs)

    def _bindings(self):
        return ((layer.name, layer.module, (layer,)) for layer in self.layers)

    def _record(self, *args, **kwargs):  # what the backend calls
        if self.recording:
            self._recorder.record(*args, **kwargs)

    def capture_ids(self, rows) -> Capture:
        """One forward of token id rows; its Capture (one Example per row, padding removed).

        The rows (lists of token ids, special tokens included) are right-padded into one batch
        and the model runs in eval mode under ``torch.inference_mode`` without a key/value
        cache. ``capture.batch`` is the padded :class:`~probe.captures.CapturedBatch` (what
        :mod:`probe.runner` writes). This call's capture is not kept in :attr:`captures`.

        >>> from probe import AttentionProbe, load_model
        >>> model, tokenizer = load_model()
        >>> rows = [tokenizer("A robin.")["input_ids"], tokenizer("No.")["input_ids"]]
        >>> with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
        ...     cap = p.capture_ids(rows)
        >>> cap[1].tokens, cap[1]["blocks.0.attn.pattern"].shape, cap.batch.spans
        (['[CLS]', 'no', '.', '[SEP]'], (12, 4, 4), [(0, 5), (0, 4)])
        """
        self._require_attached("capture_ids()")
        return capture_forward(self, **_padded(rows, self, "capture_ids()"))

    def stream_ids(self, rows, on_layer) -> None:
        """One forward of token id rows (as :meth:`capture_ids`) whose tensors are handed over
        layer by layer instead of kept: ``on_layer(layer, {component: tensor}, spans)`` gets
        each captured layer's padded ``[batch, ...]`` torch tensors as soon as the layer is
        computed, and ``spans``, each row's ``(start, stop)``. Nothing is kept, so memory holds
        one layer, not all (:mod:`probe.runner` writes long sequences this way).

        >>> from probe import AttentionProbe, load_model
        >>> model, tokenizer = load_model()
        >>> seen = []
        >>> with AttentionProbe(model, tokenizer, keys=["pattern"], layers=[0, 5]) as p:
        ...     p.stream_ids([tokenizer("A robin.")["input_ids"]],
        ...                  lambda layer, got, spans: seen.append((layer, tuple(got["pattern"].shape), spans)))
        >>> seen
        [(0, (1, 12, 5, 5), [(0, 5)]), (5, (1, 12, 5, 5), [(0, 5)])]
        """
        self._require_attached("stream_ids()")
        inputs = _padded(rows, self, "stream_ids()")
        self._recorder.stream = on_layer
        try:
            run_forward(self, **inputs)
        finally:
            self._recorder.stream = None

    def run(self, texts, batch_size: int = 32, *, truncate: bool = False, meta=None,
            ids=None, heads=None, **refused) -> Capture:
        """Capture ``texts`` in memory, one Example per text in input order: eval mode, no
        key/value cache, batches sorted by length and right-padded; options as
        :func:`probe.batching.capture_texts`'s. ``heads`` narrows the probe's head selection
        for this call. To write an HDF5 run file, use :meth:`run_to_file`."""
        _refuse_file_options(refused)
        self._require_attached("run()")
        from .batching import capture_texts

        with _heads_narrowed(self, heads):
            return capture_texts(self, texts, batch_size, truncate=truncate, meta=meta, ids=ids)

    def run_to_file(self, texts, out, batch_size: int = 32, *, truncate: bool = False,
                    meta=None, ids=None, heads=None, **store_options):
        """Capture ``texts`` into the HDF5 run file ``out``; the opened :class:`~probe.store.Run`
        (close it, or use it in a ``with`` block). ``store_options``: those of
        :func:`probe.runner.capture_to_file` (dtype, compression, resume, stream, ...).
        ``heads`` narrows the head selection for this run (part of its identity: a resume must
        match)."""
        self._require_attached("run_to_file()")
        from .runner import texts_to_file

        with _heads_narrowed(self, heads):
            return texts_to_file(self, texts, out, batch_size=batch_size, truncate=truncate,
                                 meta=meta, ids=ids, **store_options)


@contextlib.contextmanager
def _heads_narrowed(probe: AttentionProbe, heads):
    """Inside the block, ``probe`` captures only ``heads`` (as its ``heads`` argument) of the
    layers it captures; ``None`` keeps its own selection."""
    if heads is None:
        yield probe
        return
    before = probe.heads
    probe.heads = probe._recorder.heads = narrowed_heads(heads, probe.layers, probe.model,
                                                         probe._plan)
    try:
        yield probe
    finally:
        probe.heads = probe._recorder.heads = before


def _padded(rows, probe: AttentionProbe, what: str) -> dict:
    """Token id ``rows`` right-padded for ``probe``'s model: ``input_ids`` and
    ``attention_mask``."""
    rows = [list(r) for r in rows]
    if not rows or any(len(r) == 0 for r in rows):
        raise InputError(f"{what} needs at least one row, each of at least one token id")
    pad_id = pad_id_of(probe.tokenizer) if probe.tokenizer is not None else 0
    input_ids, mask = pad(rows, pad_id, device_of(probe.model))
    return {"input_ids": input_ids, "attention_mask": mask}


def _refuse_file_options(given: dict) -> None:
    """``run(..., out=...)`` (and file-only options) moved to ``run_to_file``: say so
    (``out=None`` meant "in memory" before run_to_file existed: still accepted)."""
    given = {name: value for name, value in given.items() if name != "out" or value is not None}
    if not given:
        return
    if "out" in given:
        raise InputError("run() returns an in-memory Capture and takes no out=; to write an HDF5 "
                         "run file call run_to_file(texts, out, ...) instead (same options: dtype, "
                         "compression, resume, ...); it returns the opened Run")
    raise InputError(f"run() got unexpected options {', '.join(sorted(given))}; file options "
                     "(dtype, compression, resume, ...) belong to run_to_file(texts, out, ...)")
