"""``probe metrics``, ``view`` and ``compare-models``: the pattern-metric, view and model-comparison
commands (added to :mod:`probe.cli`).

One job: turn these commands' arguments into calls of the report, view and comparison modules
and write their files. Imports ``errors`` and ``readers`` at load; report, store, view,
comparison and outputs only inside the commands. Never imports :mod:`probe.cli`.
"""

from __future__ import annotations

from pathlib import Path

from .readers import bundled_path as bundled


def add_pattern_parsers(sub) -> None:
    """Add ``probe metrics``, ``view`` and ``compare-models`` to the CLI's subparsers."""
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
    from .comparison import DEFINITIONS, SUMMARY, compare_models, markdown_table, write_charts
    from .model_speed import SPEED
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
