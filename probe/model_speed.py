"""Speed and peak memory of one model: a plain forward and a probe capture of the same
sentences, timed side by side in the same run (the ``speed.csv`` rows of ``probe
compare-models``).

Peak memory is the peak resident set size above the level at the start of each measured
phase (Linux: ``/proc/self/status`` VmHWM after resetting it through ``/proc/self/clear_refs``),
so it counts torch's tensors, not only Python objects; on CUDA it is
``torch.cuda.max_memory_allocated`` above the start; elsewhere a ``getrusage`` ru_maxrss delta
(a lower bound). The method used is written in each row.

One job: :func:`speed_row`. Imports torch, :mod:`probe.capture` and :mod:`probe.inputs`.

>>> from probe import load_model
>>> model, tokenizer = load_model()
>>> row = speed_row(model, tokenizer, ["A robin is a bird.", "No."], label="minilm", rounds=1)
>>> [name for name in SPEED if name not in row], row["sentences"], row["capture_over_forward"] > 0
([], 2, True)
"""

from __future__ import annotations

import ctypes
import gc
import resource
import statistics
import time

import torch

from .capture import AttentionProbe
from .inputs import batches_by_length, encode, max_length_of, pad, pad_id_of

#: the columns of a speed row, in table order
SPEED = ("model", "sentences", "batch_size", "forward_s", "forward_sentences_per_s",
         "forward_ms_per_sentence", "capture_s", "capture_sentences_per_s", "capture_over_forward",
         "weights_mib", "forward_peak_mib", "capture_peak_mib", "memory_method")


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def peak_memory(fn, device) -> tuple[float, str]:
    """Run ``fn``; return (peak memory above the start in MiB, the method that measured it).

    >>> mib, method = peak_memory(lambda: bytearray(64 * 2**20), "cpu")  # 64 MiB, then freed
    >>> mib > 32, method.startswith(("peak RSS", "getrusage"))
    (True, True)
    """
    gc.collect()
    try:  # give freed heap back to the OS, so the phase's own growth shows in the RSS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - start) / 2**20, "torch.cuda.max_memory_allocated above start"
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # resets VmHWM (peak RSS) to the current RSS
        start = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - start) / 1024, "peak RSS above start (VmHWM after clear_refs)"
    except OSError:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        delta = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start
        return delta / 1024, "getrusage ru_maxrss delta (lower bound)"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def speed_row(model, tokenizer, texts, *, label: str, batch_size: int = 32, rounds: int = 3) -> dict:
    """The :data:`SPEED` row of ``model`` on ``texts``: median seconds over ``rounds`` of a plain
    forward and of a probe capture (pattern only) of the texts, batched alike, and the peak
    memory of each (one untimed pass each, after a warm-up, before the timed rounds)."""
    enc = encode(tokenizer, texts, max_length=max_length_of(model, tokenizer), truncate=True)
    device = next(model.parameters()).device
    batches = [pad([enc.ids[i] for i in rows], pad_id_of(tokenizer), device)
               for rows in batches_by_length([len(x) for x in enc.ids], batch_size)]

    def forward():
        with torch.inference_mode():
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask)

    def capture(part=texts):
        with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
            p.run(part, batch_size=batch_size, truncate=True)

    capture(texts[:batch_size])  # warm-up
    forward_mib, method = peak_memory(forward, device)
    capture_mib, _ = peak_memory(capture, device)
    plain, probed = [], []
    for _ in range(rounds):
        plain.append(_timed(forward))
        probed.append(_timed(capture))
    plain_s, probe_s = statistics.median(plain), statistics.median(probed)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return {"model": label, "sentences": len(texts), "batch_size": batch_size,
            "forward_s": plain_s, "forward_sentences_per_s": len(texts) / plain_s,
            "forward_ms_per_sentence": 1e3 * plain_s / len(texts),
            "capture_s": probe_s, "capture_sentences_per_s": len(texts) / probe_s,
            "capture_over_forward": probe_s / plain_s, "weights_mib": weights / 2**20,
            "forward_peak_mib": forward_mib, "capture_peak_mib": capture_mib,
            "memory_method": method}
