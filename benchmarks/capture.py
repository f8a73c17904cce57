"""Capture speed on the bundled MiniLM: probe against plain and eager forwards, same run.

Conditions, interleaved round by round over the same length-sorted batches (tokenisation and
padding included in every condition):
  plain      default implementation (sdpa), no capture
  eager+oa   eager with output_attentions=True (what notebooks and bertviz do)
  probe      AttentionProbe capturing q, k, v, pattern, z for all layers
  probe+vw   the same plus value_weighted, materialised for every example and layer
Prints sentences/second (median over rounds) and the ratios of time against the baselines.

    python benchmarks/capture.py [--n 512] [--batch-size 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sentences import sentences  # noqa: E402

from probe import AttentionProbe, load_model  # noqa: E402
from probe.inputs import batches_by_length, encode, pad  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model(device=args.device)
    texts = sentences(args.n)

    def batches():
        enc = encode(tokenizer, texts, max_length=512)
        for rows in batches_by_length([len(r) for r in enc.ids], args.batch_size):
            yield pad([enc.ids[i] for i in rows], 0, args.device)

    def forward(**extra):
        for ids, mask in batches():
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask, **extra)

    def plain():
        forward()

    def eager():
        model.set_attn_implementation("eager")
        try:
            forward(output_attentions=True)
        finally:
            model.set_attn_implementation("sdpa")

    def probe():
        with AttentionProbe(model, tokenizer, keys=["q", "k", "v", "pattern", "z"]) as p:
            p.run(texts, batch_size=args.batch_size)

    def probe_vw():
        with AttentionProbe(model, tokenizer,
                            keys=["q", "k", "v", "pattern", "z", "value_weighted"]) as p:
            cap = p.run(texts, batch_size=args.batch_size)
            for ex in cap:
                for layer in cap.layers:
                    ex[f"blocks.{layer}.attn.value_weighted"]

    conditions = {"plain": plain, "eager+oa": eager, "probe": probe, "probe+vw": probe_vw}
    for fn in conditions.values():  # warm-up
        fn()
    times = {name: [] for name in conditions}
    for _ in range(args.rounds):
        for name, fn in conditions.items():
            if args.device != "cpu":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if args.device != "cpu":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"MiniLM, {args.n} sentences of 10-25 words, batch {args.batch_size}, fp32, "
          f"{args.rounds} interleaved rounds, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'condition':<10} {'sent/s':>8} {'time/plain':>11} {'time/eager+oa':>14}")
    for name in conditions:
        print(f"{name:<10} {args.n / med[name]:8.1f} {med[name] / med['plain']:11.3f} "
              f"{med[name] / med['eager+oa']:14.3f}")


if __name__ == "__main__":
    main()
