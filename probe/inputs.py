"""Turn texts into model inputs: validation, tokenisation, length-sorted padded batches.

Batches are right-padded whatever the tokenizer's own setting: with right padding the real
tokens keep positions 0..n-1, so a padded example is computed exactly as if run alone (left
padding would shift rotary and learned positions of decoder models).

Imports numpy, torch and :mod:`probe.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError

# tokenizers report this (or larger) when they have no real limit
_NO_LIMIT = 1_000_000
#: texts longer than this many characters per token of the model's maximum are refused (or
#: cut, with truncate) before tokenising: English averages 4-5 characters a token
CHARS_PER_TOKEN_BOUND = 32


def max_length_of(model, tokenizer=None) -> int | None:
    """The longest input the model accepts: position table size or tokenizer limit."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limits = [getattr(text, name, None) for name in ("max_position_embeddings", "n_positions")]
    if tokenizer is not None:
        limits.append(getattr(tokenizer, "model_max_length", None))
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < _NO_LIMIT]
    return min(limits) if limits else None


@dataclass
class Encoded:
    """Token ids of each text, and whether it was truncated."""

    ids: list[list[int]]
    truncated: list[bool]


def encode(tokenizer, texts, *, max_length: int | None, truncate: bool = False,
           ids=None) -> Encoded:
    """Tokenise ``texts`` one by one (special tokens added), refusing empty or too-long ones.

    ``ids`` optionally names the examples in error messages (defaults to their index).
    """
    if isinstance(texts, str):
        raise InputError("expected a list of texts, got a single string; wrap it: [text]")
    texts = list(texts)
    names = list(ids) if ids is not None else [f"#{i}" for i in range(len(texts))]
    for name, text in zip(names, texts):
        if not isinstance(text, str):
            raise InputError(f"example {name}: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError(f"example {name}: the text is empty; remove it or give a sentence")
    if not texts:
        raise InputError("no texts given: expected at least one sentence")
    cut = [False] * len(texts)
    if max_length is not None:  # refuse (or cut) absurd texts before the tokenizer sees them
        bound = max_length * CHARS_PER_TOKEN_BOUND
        for i, (name, text) in enumerate(zip(names, texts)):
            if len(text) > bound:
                if not truncate:
                    raise InputError(
                        f"example {name} is {len(text):,} characters long; no text over {bound:,} "
                        f"characters ({CHARS_PER_TOKEN_BOUND} per token of the model's maximum of "
                        f"{max_length}) fits; shorten it, or pass truncate=True (--truncate) to cut it")
                texts[i], cut[i] = text[:bound], True
    out = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
    truncated = []
    for i, (name, row) in enumerate(zip(names, out)):
        too_long = max_length is not None and len(row) > max_length
        if too_long and not truncate:
            raise InputError(
                f"example {name} is {len(row)} tokens long, more than the model's maximum of "
                f"{max_length}; shorten it, or pass truncate=True (--truncate) to cut it"
            )
        if too_long:
            out[i] = _truncate(tokenizer, row, max_length)
        truncated.append(too_long or cut[i])
    return Encoded([list(r) for r in out], truncated)


def _truncate(tokenizer, row, max_length):
    """Cut a row to max_length, keeping a trailing special token (e.g. [SEP]) in place."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if row and row[-1] in special:
        return list(row[: max_length - 1]) + [row[-1]]
    return list(row[:max_length])


def batches_by_length(lengths, batch_size: int):
    """Indices grouped into batches of similar length (longest first), to waste no padding.

    >>> batches_by_length([3, 9, 4, 8], batch_size=2)
    [[1, 3], [2, 0]]
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad(rows, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into ``input_ids`` and ``attention_mask`` ``[batch, token]``."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


def pad_id_of(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def device_of(model) -> torch.device:
    """Where the model's first parameter lives (the CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def no_cache(model) -> dict:
    """``use_cache=False`` where the model's forward takes it (decoders): probe captures full
    forward passes, never a key/value cache's partial ones."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"use_cache": False} if "use_cache" in params else {}
