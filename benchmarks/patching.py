"""Cost of a full patching sweep (every layer x head x pair) against the naive way and plain forwards.

All in one process, same model, same pairs (the bundled negation pairs, expanded to --pairs with
prefixed copies as in benchmarks/study.py), noising, z patched at all aligned positions:

- sweep: :func:`probe.patch_pairs.sweep` (source and base runs batched; the patched rows of
  layer l for several pairs in one forward that runs the layers below l once per pair);
- naive: one full forward per head per pair (batch 1, same backend and intervention), timed on
  --naive-pairs pairs and scaled to all pairs;
- plain: the model's own forward (default attention implementation, no probe) of the same
  patched examples (pairs x heads target rows), batched --batch-rows at a time, timed on
  --plain-pairs pairs and scaled.

    python benchmarks/patching.py [--pairs 1000] [--batch-rows 96] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study import DATA, expand  # noqa: E402  (the same 1,000 pairs as the study benchmark)

from probe import load_model  # noqa: E402
from probe.design import plan_pairs  # noqa: E402
from probe.inputs import pad, pad_id_of  # noqa: E402
from probe.pairs import load_pairs  # noqa: E402
from probe.patch_ops import Ops  # noqa: E402
from probe.patch_pairs import head_specs, plan_setups, sweep  # noqa: E402
from probe.patching import Patcher  # noqa: E402


def naive(pt, setups, specs):
    """One forward per head per pair (the source and base runs once per pair)."""
    for s in setups:
        src = pt.source([s.source_ids])[0]
        pt.forward([s.target_ids])
        for component, layer, heads in specs:
            ops = Ops()
            for head in heads:
                ops.add_patch(component, layer, head, [0], s, src, pt.n_heads // pt.n_kv_heads)
            pt.forward([s.target_ids], ops.finish(pt.device))


def plain(model, tokenizer, setups, n_rows_per_pair, batch_rows):
    rows = [s.target_ids for s in setups for _ in range(n_rows_per_pair)]
    rows.sort(key=len)
    with torch.inference_mode():
        for i in range(0, len(rows), batch_rows):
            ids, mask = pad(rows[i:i + batch_rows], pad_id_of(tokenizer), model.device)
            model(input_ids=ids, attention_mask=mask)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=10,
                    help="interleaved rounds (sweep, naive, plain on each round's pairs), so a "
                    "change in machine load affects all three alike")
    ap.add_argument("--naive-pairs", type=int, default=2, help="pairs per round timed the naive way")
    ap.add_argument("--plain-pairs", type=int, default=10, help="pairs per round timed as plain forwards")
    ap.add_argument("--batch-rows", type=int, default=192)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model(device=args.device)
    plans = plan_pairs(expand(load_pairs(DATA / "negation_pairs.jsonl"), args.pairs))
    sweep_s = naive_s = plain_s = 0.0
    with Patcher(model, tokenizer) as pt:
        setups = [s for s in plan_setups(pt, plans) if not s.status]
        specs = head_specs(pt, "z")
        n, h = len(setups), len(specs)
        print(f"{n} pairs x {h} heads = {n * h} patched rows (bundled MiniLM, {args.device}, "
              f"{torch.get_num_threads()} threads, {args.rounds} interleaved rounds)", flush=True)
        sweep(pt, setups[:8], specs, batch_rows=args.batch_rows)       # warm-up
        plain(model, tokenizer, setups[:2], h, args.batch_rows)
        small = 0
        for r in range(args.rounds):
            part = setups[r::args.rounds]
            t0 = time.perf_counter()
            result = sweep(pt, part, specs, batch_rows=args.batch_rows)
            sweep_s += time.perf_counter() - t0
            small += int(result.small_gap.sum())
            assert pt.reuse, "the model fell back to full rows"
            k = min(args.naive_pairs, len(part))
            t0 = time.perf_counter()
            naive(pt, part[:k], specs)
            naive_s += (time.perf_counter() - t0) * len(part) / k
            k = min(args.plain_pairs, len(part))
            pt.probe.detach()                                           # the model's own forward
            try:
                t0 = time.perf_counter()
                plain(model, tokenizer, part[:k], h, args.batch_rows)
                plain_s += (time.perf_counter() - t0) * len(part) / k
            finally:
                pt.probe.attach()
            print(f"  round {r + 1}: sweep {sweep_s:.1f} s, naive {naive_s:.1f} s, plain {plain_s:.1f} s "
                  "(cumulative)", flush=True)
    print(f"sweep {sweep_s:.1f} s ({n * h / sweep_s:.0f} patched rows/s; {small} pairs below the gap)")
    print(f"naive, one forward per head per pair: {naive_s:.1f} s "
          f"(timed on {args.naive_pairs} pairs a round, scaled)")
    print(f"plain forwards of the same {n * h} examples: {plain_s:.1f} s "
          f"(timed on {args.plain_pairs} pairs a round, scaled)")
    print(f"sweep / naive = {sweep_s / naive_s:.3f}  (goal <= 0.6)")
    print(f"sweep / plain forwards = {sweep_s / plain_s:.3f}")


if __name__ == "__main__":
    main()
