"""One input captured by N Ray tasks, one shard each, then combined: the recipe for users who
already run Ray (install with `pip install -e ".[ray]"`).

    python experiments/ray_capture.py [INPUT] --tasks N --out DIR/ [--pairs] [--copy] [...]

INPUT is a text file as `probe capture` reads it (.txt, .jsonl with a 'text' field, .csv), or
with `--pairs` a pair file whose pairs and matched controls are captured the way
`probe negation` captures them (default with `--pairs`: the bundled negation pairs); then
`probe analyze DIR/run.h5 --out FOLDER` runs the study on the combined run.

Each task calls :func:`capture_shard`, which uses probe's Python API only (no Ray in it) and
writes DIR/shard-K-of-N.h5 with ``resume=True``. The tasks share nothing but the folder (on a
cluster: a shared file system), so a task that Ray retries (``--retries``), or a second run of
this script, continues its shard where it stopped. The driver then joins the shards with
``probe.store.combine`` into DIR/run.h5: a view over the shards, or with `--copy` one
self-contained file. The examples are dealt out to the tasks in equal parts of the plan's
order (a batch two tasks share is computed by both); with fewer examples than tasks, some
shard stays empty (a warning).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# ---- config: defaults of the options below -----------------------------------------------
ROOT = Path(__file__).resolve().parent.parent
TASKS = 2
WINDOW = 256                  # inputs sorted by length together (part of the batch plan)
BATCH_SIZE = 32
CPUS_PER_TASK = 1             # Ray's num_cpus per task (torch threads follow it)
RETRIES = 3                   # Ray's max_retries: a retried task resumes its shard
# -------------------------------------------------------------------------------------------


def make_records(input_path, *, pairs: bool = False):
    """A zero-argument callable returning a fresh iterator over the input's records (what
    :func:`probe.runner.capture_to_file` reads twice): the lines or rows of a text file, or
    with ``pairs`` every sentence of a pair file's pairs and their matched controls."""
    from probe.readers import iter_records, records_from_texts

    if not pairs:
        return lambda: iter_records(input_path)
    from probe.design import plan_pairs
    from probe.pairs import load_pairs
    from probe.study import pair_texts

    texts, metas = pair_texts(plan_pairs(load_pairs(input_path)), "negation")
    return lambda: records_from_texts(texts, metas)


def capture_shard(input_path, out_dir, k: int, n: int, *, pairs: bool = False, model=None,
                  keys=None, batch_size: int = BATCH_SIZE, window: int = WINDOW,
                  dtype: str = "float32", device: str = "cpu") -> dict:
    """Capture shard ``k`` of ``n`` of the input into ``out_dir/shard-K-of-N.h5`` (resumed if
    it is there); returns what it wrote: ``{"path", "examples", "complete", "seconds"}``.

    ``pairs``: the input is a pair file, captured with the components the pair studies need
    (``keys`` is ignored). ``model``: a hub name or folder (None: the bundled MiniLM).
    """
    from probe import AttentionProbe, load_model
    from probe.launch import shard_path
    from probe.readers import input_format
    from probe.runner import capture_to_file
    from probe.study import STUDY_COMPONENTS

    t0 = time.perf_counter()
    out = shard_path(os.path.join(out_dir, ""), k, n)  # a trailing separator: a folder
    records = make_records(input_path, pairs=pairs)
    name = f"{input_path} (pairs)" if pairs else f"{input_path} ({input_format(input_path)})"
    loaded = load_model(model, device=device)
    with AttentionProbe(*loaded, keys=STUDY_COMPONENTS if pairs else keys) as probe:
        run = capture_to_file(probe, records, out, batch_size=batch_size, window=window,
                              dtype=dtype, resume=True, shard=f"{k}/{n}", input_name=name)
    with run:
        return {"path": out, "examples": len(run), "complete": run.complete,
                "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", nargs="?", help="text file, or pair file with --pairs "
                        "(default with --pairs: the bundled negation pairs)")
    parser.add_argument("--out", required=True, help="folder of the shard files and run.h5")
    parser.add_argument("--tasks", type=int, default=TASKS, help="Ray tasks (shards)")
    parser.add_argument("--pairs", action="store_true", help="INPUT is a pair file")
    parser.add_argument("--copy", action="store_true", help="combine into one self-contained file")
    parser.add_argument("--combined", help="the combined run file (default: OUT/run.h5)")
    parser.add_argument("--model", default=None, help="hub name or folder (default: bundled MiniLM)")
    parser.add_argument("--keys", help="comma-separated components (default: all)")
    parser.add_argument("--window", type=int, default=WINDOW)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cpus-per-task", type=float, default=CPUS_PER_TASK)
    parser.add_argument("--retries", type=int, default=RETRIES)
    args = parser.parse_args(argv)
    if args.input is None and not args.pairs:
        parser.error("give INPUT, or --pairs for the bundled negation pairs")
    input_path = args.input or str(ROOT / "data" / "negation_pairs.jsonl")

    import ray

    from probe.errors import ProbeError
    from probe.store import combine

    combined = args.combined or str(Path(args.out) / "run.h5")
    if Path(combined).exists():
        parser.error(f"{combined} already exists (probe never overwrites a run); remove it or "
                     "give --combined")
    t0 = time.perf_counter()
    ray.init(include_dashboard=False)  # a running cluster when RAY_ADDRESS is set
    task = ray.remote(num_cpus=args.cpus_per_task, max_retries=args.retries)(capture_shard)
    options = {"pairs": args.pairs, "model": args.model, "window": args.window,
               "keys": args.keys.split(",") if args.keys else None,
               "batch_size": args.batch_size, "dtype": args.dtype, "device": args.device}
    done = ray.get([task.remote(input_path, args.out, k, args.tasks, **options)
                    for k in range(args.tasks)])
    ray.shutdown()
    for shard in done:
        print(f"{shard['path']}: {shard['examples']} examples, "
              f"{'complete' if shard['complete'] else 'incomplete'}, {shard['seconds']:.1f} s")
    try:
        combine([shard["path"] for shard in done], combined, copy=args.copy)
    except ProbeError as err:
        print(f"ray_capture: error: {err}", file=sys.stderr)
        return 2
    print(f"{combined}: {sum(s['examples'] for s in done)} examples from {args.tasks} tasks"
          f"{' (self-contained copy)' if args.copy else ''}; {time.perf_counter() - t0:.1f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
