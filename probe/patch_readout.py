"""What a patch measures: the readout of one forward pass and its score against the source.

``embedding``: the mean of the last hidden state over non-special tokens, scored by cosine
with the source's; ``logit``: the logit of the pair's target token at the mask token, else at
the last real token (needs a language-modelling head). One job: readouts and scores; imports
:mod:`probe.errors` only.

>>> from probe import load_model
>>> model, tokenizer = load_model()
>>> r = Readout(model, tokenizer)
>>> r.metric, r.min_gap
('embedding', 0.001)
"""

from __future__ import annotations

import torch

from .errors import InputError

METRICS = ("embedding", "logit")
#: default smallest |gap| that is normalised by; smaller gaps are flagged, not divided by
MIN_GAP = {"embedding": 1e-3, "logit": 0.05}


class Readout:
    """The metric a :class:`~probe.patching.Patcher` reads and scores forwards by.

    ``metric`` None chooses ``logit`` where the model has an output head, else
    ``embedding``; ``min_gap`` defaults to :data:`MIN_GAP` of the metric. ``options`` are
    the forward keywords the readout needs (the hidden states of a model with a head).
    """

    def __init__(self, model, tokenizer, metric: str | None = None, min_gap: float | None = None):
        head = getattr(model, "get_output_embeddings", None)
        has_head = head is not None and head() is not None
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
        self.tokenizer = tokenizer
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.options = {"output_hidden_states": True} if metric == "embedding" and has_head else {}

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

    def read(self, out, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The readout ``[row, ...]`` (float64) of a model output for padded ``ids``/``mask``
        ``[row, token]``: the target position's logits, or the mean embedding."""
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

    def score(self, readout: torch.Tensor, source: torch.Tensor, target_id: int | None) -> torch.Tensor:
        """The metric of readouts ``[row, ...]``: cosine with the source's embedding, or the
        target logit."""
        if self.metric == "logit":
            return readout[..., target_id]
        return torch.nn.functional.cosine_similarity(readout, source.expand_as(readout), dim=-1)


__all__ = ["METRICS", "MIN_GAP", "Readout"]
