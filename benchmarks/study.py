"""Time the whole negation study on 1,000 pairs (with their controls), and its steps.

The 1,000 pairs are the bundled negation pairs with their controls, each also prefixed with an
introductory phrase ("Yesterday, ...", "As expected, ...") on all three sentences, so every
text is distinct; a prefixed copy keeps its template's cluster.

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
from probe.design import plan_pairs
from probe.pairs import load_pairs
from probe.study import STUDY_COMPONENTS, capture_pairs
from probe.study_report import analyze

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
                           control=prefix + lower_first(p.control)))
        k += 1
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    pairs = expand(load_pairs(DATA / "negation_pairs.jsonl"), args.pairs)
    out = Path(tempfile.mkdtemp(prefix="probe-study-"))
    t0 = time.perf_counter()
    plans = plan_pairs(pairs)
    plan_s = time.perf_counter() - t0
    model, tokenizer = load_model()
    with AttentionProbe(model, tokenizer, keys=STUDY_COMPONENTS) as probe:
        capture_pairs(probe, plans, out / "run.h5").close()
    capture_s = time.perf_counter() - t0 - plan_s
    with open_run(out / "run.h5") as run:
        result = analyze(run, out, n_resamples=args.resamples)
    total = time.perf_counter() - t0
    n_texts = sum(2 + (p.control is not None) for p in plans)
    print(f"negation study, MiniLM, {len(plans)} pairs with controls ({n_texts} sentences), "
          f"{args.resamples} bootstrap resamples")
    print(f"  plan (cues, controls, clusters) {plan_s:6.1f} s")
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
              f"statistics {again.timings['statistics']:.1f} s)")
    shutil.rmtree(out)


if __name__ == "__main__":
    main()
