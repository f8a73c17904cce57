"""Compare models on the same sentences: architecture, pattern metrics, speed (same run).

>>> from probe.comparison import architecture
>>> from probe import load_model
>>> architecture(load_model()[0])["heads"]
12
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from . import metrics as M
from .capture import AttentionProbe
from .inputs import batches_by_length, encode, max_length_of, pad, pad_id_of
from .models import load_model

SUMMARY = ("first_token", "sink_share", "self", "previous", "next", "local", "distance",
           "entropy_norm", "content_function_ratio")


def architecture(model) -> dict:
    """Layers, heads, key/value heads, hidden size, vocabulary and parameters of a model."""
    c = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(c, "num_attention_heads", None)
    return {"model_type": c.model_type, "class": type(model).__name__,
            "layers": getattr(c, "num_hidden_layers", None), "heads": heads,
            "kv_heads": getattr(c, "num_key_value_heads", None) or heads,
            "hidden": getattr(c, "hidden_size", None), "vocab": getattr(c, "vocab_size", None),
            "parameters": int(sum(p.numel() for p in model.parameters()))}


def _speed(model, tokenizer, texts, batch_size, rounds):
    """Median seconds over ``rounds`` of a plain forward and of a probe capture of the texts."""
    enc = encode(tokenizer, texts, max_length=max_length_of(model, tokenizer), truncate=True)
    device = next(model.parameters()).device
    batches = [pad([enc.ids[i] for i in rows], pad_id_of(tokenizer), device)
               for rows in batches_by_length([len(x) for x in enc.ids], batch_size)]
    plain, probe = [], []
    with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
        p.run(texts[:batch_size], truncate=True)  # warm-up
    for _ in range(rounds):
        t0 = time.perf_counter()
        with torch.inference_mode():
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
            p.run(texts, batch_size=batch_size, truncate=True)
        probe.append(time.perf_counter() - t0)
    return statistics.median(plain), statistics.median(probe)


def compare_models(names, texts, *, meta=None, group_by=None, batch_size: int = 32,
                   rounds: int = 3, device: str = "cpu"):
    """Rows for the architecture, metric and speed tables of every model in ``names``."""
    arch_rows, metric_rows, speed_rows = [], [], []
    for name in names:
        model, tokenizer = load_model(None if name in ("bundled", "default") else name, device=device)
        label = "bundled all-MiniLM-L6-v2" if name in ("bundled", "default") else name
        arch_rows.append({"model": label, **architecture(model)})
        with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
            capture = p.run(texts, batch_size=batch_size, truncate=True, meta=meta)
        per_example = [M.example_metrics(ex) for ex in capture]
        groups = {"all": list(range(len(per_example)))}
        if group_by:
            for i, ex in enumerate(capture):
                groups.setdefault(f"{group_by}={ex.meta.get(group_by, '')}", []).append(i)
        for group, idx in groups.items():
            row = {"model": label, "group": group, "n": len(idx)}
            for m in SUMMARY:
                with np.errstate(invalid="ignore"):
                    row[m] = float(np.nanmean([per_example[i][m] for i in idx]))
            metric_rows.append(row)
        plain_s, probe_s = _speed(model, tokenizer, texts, batch_size, rounds)
        speed_rows.append({"model": label, "sentences": len(texts), "batch_size": batch_size,
                           "forward_s": plain_s, "forward_sentences_per_s": len(texts) / plain_s,
                           "forward_ms_per_sentence": 1e3 * plain_s / len(texts),
                           "capture_s": probe_s, "capture_sentences_per_s": len(texts) / probe_s,
                           "capture_over_forward": probe_s / plain_s})
        del model
    return arch_rows, metric_rows, speed_rows


def markdown_table(rows, columns) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
