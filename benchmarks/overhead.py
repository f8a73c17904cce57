"""What each capture key set costs per forward pass, as ratios to the plain forward.

Models and inputs: the bundled MiniLM (bidirectional, 12 heads of 32) and a tiny random causal
Llama (hidden 256, 4 layers, 8 query heads over 2 key/value heads), at 32 and 128 tokens,
batch 1 and 32. Batch 32 is right-padded: real lengths drawn between 3/4 of the length and
the length, so the padding mask is exercised.

Conditions, round-robin over the same batches in one process (the starting condition rotates
each round):
  plain    the model's own default attention (sdpa), no probe
  base     AttentionProbe capturing q, k, v, pattern, z
  +vw      base plus value_weighted (stored as value_norm; value_weighted is derived on read)
  default  AttentionProbe's default keys (q, k, v, scores, pattern, z, value_norm)
Only the forward calls are timed: each condition has one probe, built once and attached for
its turn in each round (as a user keeps one probe over many batches); captures are dropped
after each call. Each round's times become ratios to that round's plain time,
and the table shows the median ratio over rounds: ratios, not absolute times, since this
machine's cores are shared.

    python benchmarks/overhead.py [--rounds 5] [--target 0.25] [--threads 1]
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time

import torch
import transformers as T

from probe import AttentionProbe, load_model

BASE = ["q", "k", "v", "pattern", "z"]
CONDITIONS = {"plain": None, "base": BASE, "+vw": BASE + ["value_weighted"], "default": "default"}


def tiny_llama():
    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4,
                           num_attention_heads=8, num_key_value_heads=2, intermediate_size=688,
                           max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                           pad_token_id=0)
    return T.AutoModel.from_config(config).eval()


def make_batch(length: int, batch: int, low: int, high: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, high, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1:
        real = torch.randint(length * 3 // 4, length + 1, (batch,), generator=g)
        real[0] = length  # the batch keeps its width
        for row, n in enumerate(real.tolist()):
            mask[row, n:] = 0
            ids[row, n:] = 0
    return ids, mask


def timed(model, probe, batch, reps: int) -> float:
    ids, mask = batch
    options = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}

    def loop():
        start = time.perf_counter()
        for _ in range(reps):
            model(input_ids=ids, attention_mask=mask, **options)
            if probe is not None:
                probe.captures.clear()
        return time.perf_counter() - start

    with torch.inference_mode():
        if probe is None:
            return loop()
        with probe:  # one probe per condition, attached for its turn: its caches persist
            return loop()


def measure(model, batch, rounds: int, target: float) -> tuple[int, dict[str, float]]:
    probes = {name: None if keys is None else
              AttentionProbe(model) if keys == "default" else AttentionProbe(model, keys=keys)
              for name, keys in CONDITIONS.items()}
    for probe in probes.values():  # warm-up (first calls, the probes' caches)
        timed(model, probe, batch, 1)
    one = timed(model, None, batch, 1)
    reps = max(1, round(target / one))
    names = list(CONDITIONS)
    ratios = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        times = {name: timed(model, probes[name], batch, reps) for name in order}
        for name in names:
            ratios[name].append(times[name] / times["plain"])
        ratios.setdefault("+vw/base", []).append(times["+vw"] / times["base"])
        ratios.setdefault("default/base", []).append(times["default"] / times["base"])
    return reps, {name: statistics.median(v) for name, v in ratios.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--target", type=float, default=0.25,
                    help="seconds per condition per round (sets the repetitions)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable ratios on a shared machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    minilm, _ = load_model()
    models = {"MiniLM": (minilm, 1000, 29000), "tiny Llama (GQA)": (tiny_llama(), 3, 1000)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} rounds; time ratios")
    cols = ["base", "+vw", "default", "+vw/base", "default/base"]
    print(f"| model | tokens | batch | reps | {' | '.join(cols)} |")
    print("|---|---|---|---|" + "---|" * len(cols))
    for name, (model, low, high) in models.items():
        for length in (32, 128):
            for size in (1, 32):
                batch = make_batch(length, size, low, high, seed=length + size)
                reps, med = measure(model, batch, args.rounds, args.target)
                print(f"| {name} | {length} | {size} | {reps} | "
                      + " | ".join(f"{med[c]:.3f}" for c in cols) + " |", flush=True)


if __name__ == "__main__":
    main()
