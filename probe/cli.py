"""The ``probe`` command line: parse arguments, call the library, report.

Subcommands:

- ``probe capture [INPUT] [--out RUN.h5]``: capture attention of texts (default: the bundled
  example sentences) on a model (default: the bundled MiniLM); print a summary, or stream
  every example to an HDF5 run file (resumable with ``--resume``).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from .errors import ProbeError, ProbeWarning
from .readers import bundled_path as bundled

_default_showwarning = warnings.showwarning


def _summary(capture, out=sys.stdout) -> None:
    import numpy as np

    from .metrics import first_token_attention, mean_row_entropy
    from .names import key

    layers = capture.layers
    print(f"captured {len(capture)} examples, layers {layers[0]}..{layers[-1]}, "
          f"components: {', '.join(capture.components)}", file=out)
    if "pattern" not in capture.components:
        return
    print("per layer, averaged over heads: mean row entropy in nats (uniform bound) | "
          "attention to the first token", file=out)
    for ex in capture:
        print(f"\n[{ex.index}] {ex.text}", file=out)
        print("    tokens: " + " ".join(ex.tokens), file=out)
        n = len(ex.tokens)
        for layer in layers:
            pattern = ex[key(layer, "pattern")]
            ent = mean_row_entropy(pattern).mean()
            first = first_token_attention(pattern)
            top = int(np.argmax(first))
            head = capture.heads.get(layer, list(range(len(first))))[top]  # selected heads
            print(f"    layer {layer}: entropy {ent:.2f} ({np.log(n):.2f}) | first token "
                  f"{first.mean():.2f} (max head {head}: {first[top]:.2f})", file=out)


def parse_layers(text: str | None) -> list[int] | None:
    """``--layers 0,5,-1`` as integers, or a clear error.

    >>> parse_layers("0, 5,-1")
    [0, 5, -1]
    """
    if not text:
        return None
    items = [x.strip() for x in text.split(",")]
    bad = [x for x in items if not x.lstrip("-").isdigit()]
    if bad:
        raise ProbeError(f"--layers {text!r}: {', '.join(repr(b) for b in bad)} is not a layer "
                         "index; give comma-separated integers such as 0,5 or -1")
    return [int(x) for x in items]


def cmd_capture(args) -> int:
    from .capture import AttentionProbe
    from .models import load_model
    from .readers import input_format, iter_records

    from .models import check_device

    check_device(args.device)
    path = Path(args.input) if args.input else bundled("sentences.txt")
    keys = args.keys.split(",") if args.keys else None
    layers = parse_layers(args.layers)
    if args.out is None:
        records = list(iter_records(path))
        model, tokenizer = load_model(args.model, device=args.device)
        with AttentionProbe(model, tokenizer, layers=layers, keys=keys, heads=args.heads) as p:
            capture = p.run([r.text for r in records], batch_size=args.batch_size,
                            truncate=args.truncate, meta=[r.meta for r in records])
        _summary(capture)
        return 0

    from .runner import capture_to_file, parse_shard

    device, shard = args.device, args.shard
    out = Path(args.out)
    if shard is not None:
        from .launch import shard_from_env, shard_path

        k, n = parse_shard(shard)
        shard = f"{k}/{n}"
        out = Path(shard_path(args.out, k, n))
        launch = shard_from_env()
        if args.shard == "auto" and launch.local_rank is not None and device == "cuda":
            device = f"cuda:{launch.local_rank}"  # one GPU per local rank
    elif args.out.endswith(("/", os.sep)) or out.is_dir():
        raise ProbeError(f"--out {args.out} is a folder; give a run file (run.h5), or --shard "
                         "K/N or --shard auto to write DIR/shard-K-of-N.h5")
    next(iter_records(path), None)  # fail fast on a missing or unreadable input
    if out.exists() and not args.resume:
        raise ProbeError(f"{out} already exists; pass --resume to continue it, or choose "
                         "another --out (probe never overwrites a run)")
    model, tokenizer = load_model(args.model, device=device)
    with AttentionProbe(model, tokenizer, layers=layers, keys=keys, heads=args.heads) as p:
        run = capture_to_file(p, lambda: iter_records(path), out, batch_size=args.batch_size,
                              dtype=args.dtype, compression=args.compression,
                              resume=args.resume, truncate=args.truncate, window=args.window,
                              progress=not args.quiet, input_name=f"{path} ({input_format(path)})",
                              shard=shard, stream=args.stream)
    with run:
        size = out.stat().st_size
        print(f"{out}: {len(run)} examples, {run.attrs['n_examples']} in the input, "
              f"{'complete' if run.complete else 'incomplete'}; {size / 1e6:.1f} MB "
              f"({size / max(len(run), 1) / 1e3:.1f} kB per example); layers "
              f"{list(run.layers)}, components {', '.join(run.components)}; dtype "
              f"{run.attrs['dtype']}, compression {run.attrs['compression']}")
    return 0


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


def cmd_metrics(args) -> int:
    from .report import write_report
    from .store import open_run

    with open_run(args.run) as run:
        files = write_report(run, args.out, group_by=args.group_by or [], window=args.window)
    print(f"wrote {', '.join(Path(f).name for f in files)} to {args.out}")
    return 0


def cmd_view(args) -> int:
    import os

    import h5py

    from .errors import InputError
    from .store import open_run
    from .view import build_view

    out = Path(args.out)
    # never write the page over the run (or any HDF5 file): a typo must not destroy a capture
    if os.path.realpath(out) == os.path.realpath(args.run) or (
            out.exists() and (out.is_dir() or h5py.is_hdf5(out)
                              or (os.path.exists(args.run) and os.path.samefile(out, args.run)))):
        raise InputError(f"--out {out} is the run file, an HDF5 file or a folder; the view is an "
                         "HTML page: give it its own name (e.g. view.html)")
    with open_run(args.run) as run:
        if not 0 <= args.example < len(run):
            raise InputError(f"--example {args.example}: the run holds examples 0..{len(run) - 1}")
        ex = run[args.example]
        other = None
        if "pair_id" in ex.meta and not args.single:
            partner = "counterfactual" if ex.meta["side"] == "original" else "original"
            for i, meta in enumerate(run.metas()):
                if (meta.get("pair_id") == ex.meta["pair_id"] and meta.get("side") == partner
                        and meta.get("set") == ex.meta.get("set")):
                    other = run[i]
                    break
            if other is not None and ex.meta["side"] == "counterfactual":
                ex, other = other, ex
        page = build_view(ex, other, title=None if other is None else f"{ex.text} / {other.text}")
    # written beside its final name and moved into place: a failed write leaves no half page
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(page)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    print(f"wrote {args.out} ({len(page) / 1e3:.0f} kB){' for a pair' if other is not None else ''}")
    return 0


def cmd_compare_models(args) -> int:
    from .comparison import DEFINITIONS, SPEED, SUMMARY, compare_models, markdown_table, write_charts
    from .readers import iter_records
    from .outputs import write_csv

    path = Path(args.texts) if args.texts else bundled("sentences.txt")
    records = list(iter_records(path))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arch, metric_rows, speed, sentences = compare_models(
        args.models, [r.text for r in records], meta=[r.meta for r in records], group_by=args.group_by,
        batch_size=args.batch_size, rounds=args.rounds, device=args.device)
    arch_cols = ["model", "model_type", "class", "layers", "heads", "kv_heads", "hidden", "vocab",
                 "parameters"]
    metric_cols = ["model", "group", "n", *SUMMARY]
    sentence_cols = ["model", "example", *([args.group_by] if args.group_by else []), "tokens", *SUMMARY,
                     "text"]
    write_csv(out / "architecture.csv", arch, arch_cols)
    write_csv(out / "metrics.csv", metric_rows, metric_cols)
    write_csv(out / "sentences.csv", sentences, sentence_cols)
    write_csv(out / "speed.csv", speed, list(SPEED))
    charts = write_charts(out, metric_rows, speed, args.group_by)
    definitions = "\n".join(f"- `{m}`: {DEFINITIONS[m]}" for m in SUMMARY)
    report = "\n\n".join([f"# Model comparison on {len(records)} sentences from {path}",
                           "## Architecture", markdown_table(arch, arch_cols),
                           "## Pattern metrics (mean over examples, layers and heads)", definitions,
                           markdown_table(metric_rows, metric_cols),
                           f"## Speed and peak memory (median of {args.rounds} rounds; every model "
                           "measured side by side in this run)", markdown_table(speed, list(SPEED)),
                           "## Files", ", ".join(["architecture.csv", "metrics.csv", "sentences.csv (per "
                                                  "model and sentence)", "speed.csv",
                                                  *sorted({Path(c).name for c in charts})])]) + "\n"
    (out / "comparison.md").write_text(report, encoding="utf-8")
    print(report)
    return 0


def cmd_combine(args) -> int:
    from .store import combine, open_run

    shards = []
    for item in args.shards:  # a folder stands for the shard-K-of-N.h5 files in it
        found = sorted(Path(item).glob("shard-*-of-*.h5")) if Path(item).is_dir() else [item]
        if not found:
            raise ProbeError(f"{item} is a folder without shard-K-of-N.h5 files")
        shards += [str(f) for f in found]
    combine(shards, args.out, allow_incomplete=args.allow_incomplete, copy=args.copy)
    with open_run(args.out) as run:
        kind = (f"a self-contained copy, {os.path.getsize(args.out) / 1e6:.1f} MB" if args.copy
                else "a view reading its tensors from the shards")
        print(f"{args.out}: {len(run)} examples from {len(shards)} shards, "
              f"{'complete' if run.complete else 'incomplete'}; {kind}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"probe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("capture", help="capture attention of texts; print a summary or "
                         "stream to an HDF5 run file")
    cap.add_argument("input", nargs="?", help="a .txt file (one sentence a line), .jsonl "
                     "(a 'text' field, optional 'id' and other fields kept as metadata) or .csv "
                     "(a 'text' column); default: the bundled example sentences")
    cap.add_argument("--out", help="HDF5 run file to write (without it: print a summary)")
    cap.add_argument("--model", default=None,
                     help="hub name or local folder (default: bundled all-MiniLM-L6-v2)")
    cap.add_argument("--layers", help="comma-separated layer indices (default: all)")
    cap.add_argument("--keys", help="comma-separated components or full keys (default: all)")
    cap.add_argument("--heads", help="capture only these heads: comma-separated LAYER.HEAD, "
                     "HEAD * for every head of the layer (e.g. 3.7,5.*); a layer named here "
                     "keeps only its listed heads (k, v: the key/value heads they read) and is "
                     "captured even if --layers omits it; without --layers only these layers")
    cap.add_argument("--batch-size", type=int, default=32)
    cap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                     help="floating type on disk (default float32); bfloat16 is stored as "
                     "uint16 bit patterns (dataset attribute stored_dtype) and read back as float32")
    cap.add_argument("--compression", default="none",
                     help="none (default), lzf, gzip or gzip-N; activations barely compress")
    cap.add_argument("--device", default="cpu")
    cap.add_argument("--resume", action="store_true",
                     help="continue an interrupted run in --out (settings must match)")
    cap.add_argument("--truncate", action="store_true",
                     help="cut texts longer than the model's maximum instead of refusing them")
    cap.add_argument("--window", type=int, default=2048,
                     help="inputs sorted by length together (part of the batch plan)")
    cap.add_argument("--shard", default=None, metavar="K/N|auto",
                     help="capture only input windows w with w %% N == K (one of N processes); "
                     "'auto' reads K and N from torchrun, SLURM or MPI; with --out DIR/ each "
                     "shard writes DIR/shard-K-of-N.h5; join them with `probe combine`")
    cap.add_argument("--stream", choices=["auto", "batch", "layer"], default="auto",
                     help="batch: write whole batches in a background thread (fast); layer: "
                     "write each layer as soon as it is computed (memory holds one layer: long "
                     "sequences, big models); auto (default): layer for batches whose captured "
                     "tensors would exceed 256 MiB. The file is the same either way")
    cap.add_argument("--quiet", action="store_true", help="no progress bar")
    cap.set_defaults(func=cmd_capture)

    def study_options(sp, with_capture=True):
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
            add_controls(sp)
            sp.add_argument("--model", default=None,
                            help="hub name or local folder (default: bundled all-MiniLM-L6-v2)")
            sp.add_argument("--batch-size", type=int, default=32)
            sp.add_argument("--device", default="cpu")
            sp.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
            sp.add_argument("--resume", action="store_true", help="continue an interrupted capture")
            sp.add_argument("--quiet", action="store_true", help="no progress bar")

    def add_controls(sp):
        sp.add_argument("--controls", choices=["auto", "field", "none"], default=None,
                        help="matched controls: 'field' uses each row's control, 'auto' builds one "
                        "from the detected cue, 'none' runs without (default: field when the file "
                        "has controls, else auto)")

    neg = sub.add_parser("negation", help="the negation study: capture pairs and their matched "
                         "controls, compare, test over clusters, report")
    neg.add_argument("--pairs", help="pair file (default: the bundled data/negation_pairs.jsonl)")
    study_options(neg)
    neg.set_defaults(func=cmd_negation)

    cf = sub.add_parser("counterfactual", help="any pair study: capture, compare, test, report")
    cf.add_argument("--pairs", required=True, help="pair file (JSONL or CSV)")
    study_options(cf)
    cf.set_defaults(func=cmd_counterfactual)

    an = sub.add_parser("analyze", help="recompute every table and figure from a stored pair run")
    an.add_argument("run", help="a run.h5 written by probe negation/counterfactual")
    study_options(an, with_capture=False)
    an.set_defaults(func=cmd_analyze)

    cues = sub.add_parser("cues", help="the study design of a pair file (cue, class, control, "
                          "cluster, duplicates) without capturing anything")
    cues.add_argument("--pairs", help="pair file (default: the bundled data/negation_pairs.jsonl)")
    cues.add_argument("--out", help="write pairs.csv here instead of printing a table")
    cues.add_argument("--seed", type=int, default=0, help="seed of automatic controls")
    add_controls(cues)
    cues.set_defaults(func=cmd_cues)

    met = sub.add_parser("metrics", help="per-example and per-head pattern metrics of a run")
    met.add_argument("run", help="a run file with patterns")
    met.add_argument("--out", required=True, help="output folder for the CSV tables")
    met.add_argument("--group-by", action="append", metavar="FIELD",
                     help="also summarise per value of this metadata field (repeatable)")
    met.add_argument("--window", type=int, default=1, help="window of the local-attention share")
    met.set_defaults(func=cmd_metrics)

    view = sub.add_parser("view", help="a self-contained interactive HTML view of one example")
    view.add_argument("run", help="a run file with patterns")
    view.add_argument("--example", type=int, default=0, help="example index in input order")
    view.add_argument("--out", required=True, help="the HTML file to write")
    view.add_argument("--single", action="store_true", help="in a pair run, show this side only")
    view.set_defaults(func=cmd_view)

    cm = sub.add_parser("compare-models", help="architecture, pattern metrics, speed and peak "
                        "memory of several models on the same sentences (tables and PNG charts)")
    cm.add_argument("models", nargs="+", help="hub names or local folders; 'bundled' for MiniLM")
    cm.add_argument("--texts", help="sentences (.txt/.jsonl/.csv; default data/sentences.txt)")
    cm.add_argument("--out", required=True, help="output folder")
    cm.add_argument("--group-by", help="metadata field to average metrics by, besides overall")
    cm.add_argument("--batch-size", type=int, default=32)
    cm.add_argument("--rounds", type=int, default=3, help="timed rounds per model")
    cm.add_argument("--device", default="cpu")
    cm.set_defaults(func=cmd_compare_models)

    from .check import add_check_parser

    add_check_parser(sub)

    from .patch_cli import add_patch_parser

    add_patch_parser(sub)

    from .verify import add_verify_parser

    add_verify_parser(sub)

    from .export import add_export_parser

    add_export_parser(sub)

    comb = sub.add_parser("combine", help="join shard files of one run into a single run file")
    comb.add_argument("shards", nargs="+", help="shard files written with --shard K/N, or a "
                      "folder of shard-K-of-N.h5 files (--shard auto --out DIR/)")
    comb.add_argument("--out", required=True, help="the combined run file to write")
    comb.add_argument("--allow-incomplete", action="store_true",
                      help="combine the committed rows of unfinished shards too")
    comb.add_argument("--copy", action="store_true",
                      help="copy the tensors too (block by block) into one self-contained file "
                      "that needs no shard files and may be written anywhere (default: a "
                      "virtual-dataset view over the shards, which must stay beside it)")
    comb.set_defaults(func=cmd_combine)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, ProbeWarning):
        print(f"probe: warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


class _Stopped(BaseException):
    """SIGINT or SIGTERM outside a capture's write loop (nothing half-written to stop)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, frame) -> None:
    """While a capture writes, ask it to stop at the next batch boundary (the batch being
    written is committed, the file stays resumable); otherwise stop right away."""
    runner = sys.modules.get("probe.runner")  # not imported: no capture is running
    if runner is None or not runner.request_stop(signum):
        raise _Stopped(signum)


def _install_signal_handlers() -> dict:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, _on_signal)
    return previous


def main(argv=None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    previous = _install_signal_handlers()
    try:
        import matplotlib
        from transformers.utils import logging as hf_logging

        matplotlib.use("Agg")  # the CLI only writes figures to files; the library never picks a backend
        hf_logging.disable_progress_bar()
        warnings.showwarning = _show_warning
        return args.func(args)
    except ProbeError as err:
        print(f"probe: error: {err}", file=sys.stderr)
        signum = getattr(err, "signum", None)  # runner.Interrupted: 130 for SIGINT, 143 for SIGTERM
        return 128 + int(signum) if signum else 2
    except (_Stopped, KeyboardInterrupt) as err:
        signum = getattr(err, "signum", signal.SIGINT)
        print("probe: error: interrupted", file=sys.stderr)
        return 128 + signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
