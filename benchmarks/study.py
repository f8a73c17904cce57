"""Time the whole negation study on 1,000 pairs, and its statistics step alone.

The 1,000 pairs are the bundled negation pairs, each also prefixed with an introductory phrase
("Yesterday, ...", "As expected, ...") on both sides, so every text is distinct; the contrast
pairs are prefixed the same way and keep their groups.

    python benchmarks/study.py [--pairs 1000] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from probe import AttentionProbe, load_model, open_run
from probe.pairs import load_pairs
from probe.study import STUDY_COMPONENTS, analyze, capture_pairs

DATA = Path(__file__).resolve().parent.parent / "data"
PREFIXES = ["Yesterday, ", "As expected, ", "In my opinion, ", "According to the report, "]


def lower_first(text: str) -> str:
    return text if text.startswith(("I ", "I'")) else text[0].lower() + text[1:]


def expand(pairs, n):
    out = list(pairs)
    k = 0
    while len(out) < n:
        prefix = PREFIXES[k // len(pairs) % len(PREFIXES)]
        p = pairs[k % len(pairs)]
        out.append(replace(p, id=f"{p.id}-{k}", original=prefix + lower_first(p.original),
                           counterfactual=prefix + lower_first(p.counterfactual),
                           group=None if p.group is None else f"{p.group}-{k}"))
        k += 1
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    negation = load_pairs(DATA / "negation_pairs.jsonl")
    contrast = load_pairs(DATA / "contrast_pairs.jsonl")
    main_pairs = expand(negation, args.pairs)
    # contrast pairs follow their negation pair into the prefixed copies
    by_group = {c.group: c for c in contrast}
    baseline = []
    for p in main_pairs:
        base_id = p.id.split("-")[0] + "-" + p.id.split("-")[1]
        c = by_group.get(base_id)
        if c is not None:
            prefix = p.original[: len(p.original) - len(lower_first(
                next(n for n in negation if n.id == base_id).original))] if p.id != base_id else ""
            baseline.append(replace(c, id=f"{c.id}:{p.id}", group=p.id,
                                    original=prefix + (lower_first(c.original) if prefix else c.original),
                                    counterfactual=prefix + (lower_first(c.counterfactual) if prefix else c.counterfactual)))
    out = Path(tempfile.mkdtemp(prefix="probe-study-"))
    t0 = time.perf_counter()
    model, tokenizer = load_model()
    with AttentionProbe(model, tokenizer, keys=STUDY_COMPONENTS) as probe:
        capture_pairs(probe, {"pairs": main_pairs, "baseline": baseline}, out / "run.h5").close()
    capture_s = time.perf_counter() - t0
    with open_run(out / "run.h5") as run:
        result = analyze(run, out, n_resamples=args.resamples)
    total = time.perf_counter() - t0
    n_texts = 2 * (len(main_pairs) + len(baseline))
    print(f"negation study, MiniLM, {len(main_pairs)} pairs + {len(baseline)} contrast pairs "
          f"({n_texts} sentences), {args.resamples} bootstrap resamples")
    print(f"  load model, capture and store   {capture_s:6.1f} s")
    for name, seconds in result.timings.items():
        print(f"  {name:<31} {seconds:6.1f} s")
    print(f"  whole study                     {total:6.1f} s")
    print(f"  run file {(out / 'run.h5').stat().st_size / 1e6:.0f} MB, stats rows {len(result.stats)}")
    with open_run(out / "run.h5") as run:
        t1 = time.perf_counter()
        again = analyze(run, out / "again", n_resamples=args.resamples, figures=False)
        print(f"  from the stored run, no figures: {time.perf_counter() - t1:.1f} s "
              f"(per-pair metrics {again.timings['per-pair metrics']:.1f} s, "
              f"statistics {again.timings['statistics']:.2f} s)")
    shutil.rmtree(out)


if __name__ == "__main__":
    main()
