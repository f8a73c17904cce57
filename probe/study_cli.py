"""``probe negation``, ``counterfactual``, ``analyze`` and ``cues``: the pair-study commands
(added to :mod:`probe.cli`).

One job: turn these commands' arguments into a study design, a pair capture and its analysis,
and report the files written. Imports ``errors`` and ``readers`` at load; the design, pairs,
capture, models, store, study, study_report and outputs modules only inside the commands.
Never imports :mod:`probe.cli`.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from .errors import ProbeError, ProbeWarning
from .readers import bundled_path as bundled


def add_study_parsers(sub) -> None:
    """Add ``probe negation``, ``counterfactual``, ``analyze`` and ``cues`` to the CLI's
    subparsers."""
    neg = sub.add_parser("negation", help="the negation study: capture pairs and their matched "
                         "controls, compare, test over clusters, report")
    neg.add_argument("--pairs", help="pair file (default: the bundled data/negation_pairs.jsonl)")
    _study_options(neg)
    neg.set_defaults(func=cmd_negation)

    cf = sub.add_parser("counterfactual", help="any pair study: capture, compare, test, report")
    cf.add_argument("--pairs", required=True, help="pair file (JSONL or CSV)")
    _study_options(cf)
    cf.set_defaults(func=cmd_counterfactual)

    an = sub.add_parser("analyze", help="recompute every table and figure from a stored pair run")
    an.add_argument("run", help="a run.h5 written by probe negation/counterfactual")
    _study_options(an, with_capture=False)
    an.set_defaults(func=cmd_analyze)

    cues = sub.add_parser("cues", help="the study design of a pair file (cue, class, control, "
                          "cluster, duplicates) without capturing anything")
    cues.add_argument("--pairs", help="pair file (default: the bundled data/negation_pairs.jsonl)")
    cues.add_argument("--out", help="write pairs.csv here instead of printing a table")
    cues.add_argument("--seed", type=int, default=0, help="seed of automatic controls")
    _add_controls(cues)
    cues.set_defaults(func=cmd_cues)


def _study_options(sp, with_capture=True) -> None:
    """The options every study command shares (and, ``with_capture``, those of its capture)."""
    sp.add_argument("--out", required=True, help="output folder (run.h5, CSVs, figures, summary.md)")
    sp.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    sp.add_argument("--seed", type=int, default=0, help="seed of bootstrap, permutations and "
                    "automatic controls")
    sp.add_argument("--pooled", action="store_true",
                    help="also report every kind pooled (labelled as pooled)")
    sp.add_argument("--example-pair", help="pair id for the four-panel figure (default: the first)")
    if with_capture:
        sp.add_argument("--baseline", help="an explicit unpaired contrast pair file "
                        "(never implied; reported as its own contrast)")
        _add_controls(sp)
        sp.add_argument("--model", default=None,
                        help="hub name or local folder (default: bundled all-MiniLM-L6-v2)")
        sp.add_argument("--batch-size", type=int, default=32)
        sp.add_argument("--device", default="cpu")
        sp.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
        sp.add_argument("--resume", action="store_true", help="continue an interrupted capture")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_controls(sp) -> None:
    """``--controls``: how matched controls are chosen."""
    sp.add_argument("--controls", choices=["auto", "field", "none"], default=None,
                    help="matched controls: 'field' uses each row's control, 'auto' builds one "
                    "from the detected cue, 'none' runs without (default: field when the file "
                    "has controls, else auto)")


def _load_plans(args, pairs_path: Path, baseline_path: Path | None):
    from .design import plan_pairs
    from .pairs import load_pairs

    plans = plan_pairs(load_pairs(pairs_path), controls=args.controls, seed=args.seed)
    if baseline_path is not None:
        plans += plan_pairs(load_pairs(baseline_path), controls="none", seed=args.seed,
                            set_name="baseline")
    return plans


def _study(args, pairs_path: Path, baseline_path: Path | None, study: str) -> int:
    import time

    from .capture import AttentionProbe
    from .models import load_model
    from .store import open_run
    from .study import STUDY_COMPONENTS, capture_pairs
    from .study_report import analyze

    out = Path(args.out)
    plans = _load_plans(args, pairs_path, baseline_path)
    run_path = out / "run.h5"
    if run_path.exists() and not args.resume:
        raise ProbeError(f"{run_path} already exists; pass --resume to continue that capture and "
                         "redo the analysis, `probe analyze` to redo the analysis only, or choose "
                         "another --out")
    _make_folder(out)
    t0 = time.perf_counter()
    model, tokenizer = load_model(args.model, device=args.device)
    with AttentionProbe(model, tokenizer, keys=STUDY_COMPONENTS) as p:
        capture_pairs(p, plans, run_path, study=study, batch_size=args.batch_size,
                      resume=args.resume, dtype=args.dtype, progress=not args.quiet).close()
    capture_s = time.perf_counter() - t0
    settings = {"pairs": str(pairs_path), "baseline": str(baseline_path) if baseline_path else None,
                "controls": args.controls or "default", "model": args.model or "bundled all-MiniLM-L6-v2",
                "resamples": args.resamples, "seed": args.seed, "pooled": args.pooled}
    with open_run(run_path) as run:
        result = analyze(run, out, n_resamples=args.resamples, seed=args.seed, pooled=args.pooled,
                         example_pair=args.example_pair, settings=settings,
                         baseline_set="baseline" if baseline_path else None)
    _report(result, capture_s)
    return 0


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ProbeError(f"cannot create the output folder {folder}: {err.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise ProbeError(f"the output folder {folder} is not writable")


def _report(result, capture_s=None) -> None:
    timings = dict(result.timings)
    if capture_s is not None:
        timings = {"capture and store": capture_s, **timings}
    print(f"wrote {len(result.files)} files to {result.out_dir}: stats.csv, pairs.csv, "
          f"pair_metrics.csv, summary.md, figures/")
    print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print()
    print((result.out_dir / "summary.md").read_text(encoding="utf-8"))


def cmd_negation(args) -> int:
    pairs = Path(args.pairs) if args.pairs else bundled("negation_pairs.jsonl")
    return _study(args, pairs, Path(args.baseline) if args.baseline else None, "negation")


def cmd_counterfactual(args) -> int:
    return _study(args, Path(args.pairs), Path(args.baseline) if args.baseline else None,
                  "counterfactual")


def cmd_analyze(args) -> int:
    from .store import open_run
    from .study_report import analyze

    out = Path(args.out)
    _make_folder(out)
    with open_run(args.run) as run:
        if not run.complete:
            warnings.warn(f"{args.run} is unfinished: {len(run)} of {run.attrs.get('n_examples')} "
                          "examples committed; pairs with a missing sentence are listed in "
                          "pairs.csv as not captured (finish it with --resume)", ProbeWarning)
        has_baseline = any(meta.get("set") == "baseline" for meta in run.metas())
        result = analyze(run, out, n_resamples=args.resamples, seed=args.seed, pooled=args.pooled,
                         example_pair=args.example_pair, title=None,
                         settings={"run": str(args.run), "resamples": args.resamples,
                                   "seed": args.seed, "pooled": args.pooled},
                         baseline_set="baseline" if has_baseline else None)
    _report(result)
    return 0


def cmd_cues(args) -> int:
    from .design import PAIR_COLUMNS
    from .outputs import write_csv

    pairs_path = Path(args.pairs) if args.pairs else bundled("negation_pairs.jsonl")
    plans = _load_plans(args, pairs_path, None)
    rows = [plan.row() for plan in plans]
    if args.out:
        _make_folder(Path(args.out).parent)
        write_csv(args.out, rows, PAIR_COLUMNS)
        print(f"wrote {args.out}: {len(rows)} pairs")
    else:
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=PAIR_COLUMNS[:-2], extrasaction="ignore",
                                delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    from collections import Counter

    found = Counter(plan.cue.source for plan in plans)
    classes = Counter(plan.cue.cls or "none" for plan in plans)
    controls = Counter(plan.control_source for plan in plans)
    print(f"{len(plans)} pairs; cue: {', '.join(f'{k} {v}' for k, v in sorted(found.items()))}; "
          f"classes: {', '.join(f'{k} {v}' for k, v in sorted(classes.items()))}; controls: "
          f"{', '.join(f'{k} {v}' for k, v in sorted(controls.items()))}",
          file=sys.stderr if not args.out else sys.stdout)
    return 0
