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

>>> from probe import load_model
>>> model, tokenizer = load_model()
>>> with Patcher(model, tokenizer) as pt:
...     r = pt.effect("A robin is a bird.", "A robin is not a bird.", heads=[(5, 3)])
>>> r.small_gap, -1.0 < r.effect < 1.0
(False, True)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

from .capture import AttentionProbe
from .errors import InputError
from .inputs import device_of, encode, max_length_of, no_cache, pad, pad_id_of
from .patch_ops import Ops, block_modules, expand_hook, residual_hook

COMPONENTS = ("z", "pattern", "value")
ABLATIONS = ("zero", "mean", "resample")
DIRECTIONS = ("noising", "denoising")
METRICS = ("embedding", "logit")
#: default smallest |gap| that is normalised by; smaller gaps are flagged, not divided by
MIN_GAP = {"embedding": 1e-3, "logit": 0.05}


@dataclass
class Source:
    """What a source run left: per layer z, pattern, v and block inputs of one text, and its readout."""

    ids: list[int]
    z: torch.Tensor          # [layer, head, token, d_head]
    pattern: torch.Tensor    # [layer, head, query, key]
    v: torch.Tensor          # [layer, kv_head, token, d_head]
    resid: torch.Tensor      # [layer, token, d_model]: each block's input
    readout: torch.Tensor    # [d_model] embedding, or [vocab] logits


@dataclass
class PatchResult:
    """One patch of one pair: the normalised effect and everything it is computed from."""

    effect: float            # (patched - base) / (source - base); NaN when small_gap
    gap: float               # source - base (embedding: 1 - cos(base, source))
    small_gap: bool          # |gap| < min_gap: not normalised
    raw: float               # patched - base, unnormalised
    metric: str              # embedding or logit
    positions: list = field(default_factory=list)  # (target, source) positions patched

    def _repr_html_(self) -> str:
        value = "not normalised (gap too small)" if self.small_gap else f"{self.effect:.3f}"
        return (f"<p>patch effect ({self.metric}): <b>{value}</b>, gap {self.gap:.4f}, raw "
                f"{self.raw:.4f}, {len(self.positions)} positions patched; one pair: descriptive, "
                "no test</p>")


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
        #: probe's attention backend, attached with recording paused: interventions only
        self.probe = AttentionProbe(model, tokenizer)
        self.layers = self.probe.layers
        self.n_layers = len(self.layers)
        self.n_heads = _config_int(model, "num_attention_heads", "n_head", "n_heads")
        self.n_kv_heads = _config_int(model, "num_key_value_heads") or self.n_heads
        has_head = model.get_output_embeddings() is not None if hasattr(model, "get_output_embeddings") else False
        if metric is None:
            metric = "logit" if has_head else "embedding"
        if metric not in METRICS:
            raise InputError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
        if metric == "logit" and not has_head:
            raise InputError(f"metric 'logit' needs a language-modelling or masked-LM head; "
                             f"{type(model).__name__} has none: use metric='embedding' or load "
                             "the model with its head (AutoModelForCausalLM / AutoModelForMaskedLM)")
        self.metric = metric
        self.min_gap = MIN_GAP[metric] if min_gap is None else float(min_gap)
        self.blocks = block_modules(model, self.layers)
        self.device = device_of(model)
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._options = dict(no_cache(model))
        if metric == "embedding" and has_head:
            self._options["output_hidden_states"] = True
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

    def target_id(self, word: str | None) -> int:
        """The vocabulary id of a pair's target word (one token), or a clear error."""
        if not word:
            raise InputError("metric 'logit' needs a target token: give the pair a 'target' field")
        tried = []
        for text in (word, " " + word):
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            tried.append(self.tokenizer.convert_ids_to_tokens(ids))
            if len(ids) == 1 and ids[0] not in (getattr(self.tokenizer, "unk_token_id", None),):
                return int(ids[0])
        raise InputError(f"target {word!r} is not one token in the vocabulary (it becomes "
                         f"{tried[0]}); give a target that the tokenizer keeps whole")

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
        handles = []
        intervene = None if ops is None else ops.apply
        if record is not None:
            def intervene(layer, pattern, value, z, _inner=intervene):
                out = None if _inner is None else _inner(layer, pattern, value, z)
                p, zz = (pattern, z) if out is None else out
                record.setdefault("z", {})[layer], record.setdefault("pattern", {})[layer] = zz, p
                record.setdefault("v", {})[layer] = value
                return out
        try:
            if ops is not None and ops.resid and self.blocks is None:
                raise InputError(f"{type(self.model).__name__} shares its blocks between layers "
                                 "(or they have no index): residual-stream patches are not available")
            if expand is not None and expand[1] > 1:
                for block in self.blocks[expand[0]:]:
                    handles.append(block.register_forward_pre_hook(
                        expand_hook(len(rows), expand[1]), with_kwargs=True))
            for index, block in enumerate(self.blocks or ()):
                if record is not None or (ops is not None and index in ops.resid):
                    handles.append(block.register_forward_pre_hook(
                        residual_hook(index, ops, record), with_kwargs=True))
            self.probe.intervention = intervene
            with torch.inference_mode():
                out = self.model(input_ids=ids, attention_mask=mask, **self._options)
        finally:
            self.probe.intervention = None
            for handle in handles:
                handle.remove()
        if expand is not None and expand[1] > 1:
            ids, mask = ids.repeat_interleave(expand[1], 0), mask.repeat_interleave(expand[1], 0)
        return self._readout(out, ids, mask)

    def _readout(self, out, ids, mask) -> torch.Tensor:
        if self.metric == "logit":
            logits = out.logits
            mask_id = getattr(self.tokenizer, "mask_token_id", None)
            last = mask.sum(1) - 1
            if mask_id is not None:
                has = (ids == mask_id) & mask.bool()
                last = torch.where(has.any(1), has.int().argmax(1), last)
            return logits[torch.arange(logits.shape[0]), last].double()
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            hidden = out.hidden_states[-1]
        keep = mask.bool()
        if self.special:
            content = keep & ~torch.isin(ids, torch.tensor(sorted(self.special), device=ids.device))
            keep = torch.where(content.any(1, keepdim=True), content, keep)
        w = keep.to(torch.float64)[..., None]
        return (hidden.double() * w).sum(1) / w.sum(1)

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

    def score(self, readout: torch.Tensor, source: torch.Tensor, target_id: int | None) -> torch.Tensor:
        """The metric of readouts ``[row, ...]``: cosine with the source's embedding, or the target logit."""
        if self.metric == "logit":
            return readout[..., target_id]
        return torch.nn.functional.cosine_similarity(readout, source.expand_as(readout), dim=-1)

    # ----------------------------------------------------------------- the one-pair API
    def effect(self, target: str, source: str, heads, *, component: str = "z", positions="all",
               target_token: str | None = None) -> PatchResult:
        """Patch ``heads`` [(layer, head), ...] of ``target`` from ``source``; the normalised effect."""
        from .patch_pairs import pair_setup

        setup = pair_setup(self, "pair", target, source, positions=positions, target_word=target_token)
        if setup.status:
            raise InputError(f"cannot patch this pair: {setup.status}")
        for layer, head in heads:
            self.check_head(layer, head, component)
        src = self.source([setup.source_ids])[0]
        base = self.forward([setup.target_ids])
        ops = Ops()
        for layer, head in heads:
            ops.add_patch(component, layer, head, [0], setup, src, self.n_heads // self.n_kv_heads)
        patched = self.forward([setup.target_ids], ops.finish(self.device))
        s_src = self.score(src.readout[None], src.readout, setup.target_token)[0]
        s_base = self.score(base, src.readout, setup.target_token)[0]
        s_patch = self.score(patched, src.readout, setup.target_token)[0]
        gap, raw = float(s_src - s_base), float(s_patch - s_base)
        small = abs(gap) < self.min_gap
        return PatchResult(np.nan if small else raw / gap, gap, small, raw, self.metric,
                           list(zip(setup.query[0].tolist(), setup.query[1].tolist())))

    # ----------------------------------------------------------------- scoped interventions
    @contextlib.contextmanager
    def ablate(self, heads, mode: str = "zero", *, reference=None, source: str | None = None):
        """Inside the block, every forward of the model has ``heads`` ablated at every position.

        ``zero``: z = 0; ``mean``: z = its mean over the tokens of the ``reference`` texts;
        ``resample``: z of the ``source`` text, position by position (positions past the
        source's length keep their own z).
        """
        if mode not in ABLATIONS:
            raise InputError(f"ablation mode must be one of {', '.join(ABLATIONS)}, not {mode!r}")
        for layer, head in heads:
            self.check_head(layer, head)
        ops = Ops()
        if mode == "mean":
            if not reference:
                raise InputError("mean ablation needs reference texts: ablate(..., reference=[...])")
            srcs = self.source(self.encode(reference))
            for layer, head in heads:
                mean = torch.cat([s.z[layer, head] for s in srcs]).mean(0)
                ops.add_broadcast(layer, head, None, mean)
        elif mode == "resample":
            if source is None:
                raise InputError("resample ablation needs a source text: ablate(..., source='...')")
            src = self.source(self.encode([source]))[0]
            for layer, head in heads:
                ops.add_broadcast(layer, head, torch.arange(len(src.ids)), src.z[layer, head])
        else:
            for layer, head in heads:
                ops.add_broadcast(layer, head, None, None)
        with self.intervening(ops.finish(self.device)):
            yield self

    @contextlib.contextmanager
    def patch(self, target: str, source: str, heads, *, component: str = "z", positions="all"):
        """Inside the block, forwards of ``target`` (any batch of it) run with ``heads`` patched from ``source``."""
        from .patch_pairs import pair_setup

        setup = pair_setup(self, "pair", target, source, positions=positions)
        if setup.status:
            raise InputError(f"cannot patch this pair: {setup.status}")
        for layer, head in heads:
            self.check_head(layer, head, component)
        src = self.source([setup.source_ids])[0]
        ops = Ops()
        for layer, head in heads:
            ops.add_patch(component, layer, head, None, setup, src, self.n_heads // self.n_kv_heads)
        with self.intervening(ops.finish(self.device)):
            yield self

    @contextlib.contextmanager
    def intervening(self, ops: Ops):
        """Apply ``ops`` to every forward inside the block (residual patches included)."""
        handles = [block.register_forward_pre_hook(residual_hook(i, ops, None), with_kwargs=True)
                   for i, block in enumerate(self.blocks) if i in ops.resid]
        self.probe.intervention = ops.apply
        try:
            yield ops
        finally:
            self.probe.intervention = None
            for handle in handles:
                handle.remove()


def kv_group(n_heads: int, n_kv_heads: int, kv_head: int) -> list[int]:
    """The query heads that read key/value head ``kv_head``.

    >>> kv_group(8, 2, 1)
    [4, 5, 6, 7]
    """
    g = n_heads // n_kv_heads
    return list(range(kv_head * g, (kv_head + 1) * g))


__all__ = ["Patcher", "PatchResult", "Source", "kv_group", "COMPONENTS", "DIRECTIONS", "METRICS"]
