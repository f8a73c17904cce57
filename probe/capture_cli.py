"""``probe capture`` and ``probe combine``: the run-file commands (added to :mod:`probe.cli`).

One job: turn these commands' arguments into calls of the capture, runner and store APIs and
report what they wrote. Imports ``errors`` and ``readers`` at load; the models, capture,
metrics, names, runner, launch and store modules only inside the commands. Never imports
:mod:`probe.cli`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import ProbeError
from .readers import bundled_path as bundled


def add_capture_parser(sub) -> None:
    """Add ``probe capture`` to the CLI's subparsers."""
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
    cap.add_argument("--no-pack-causal", action="store_true",
                     help="store the scores and pattern of causal layers (GPT-2, Llama, ...) as "
                     "full squares; by default each is stored as its lower triangle (about half "
                     "the bytes) and read back as the same square")
    cap.add_argument("--device", default="cpu")
    cap.add_argument("--resume", action="store_true",
                     help="continue an interrupted run in --out (settings must match)")
    cap.add_argument("--truncate", action="store_true",
                     help="cut texts longer than the model's maximum instead of refusing them")
    cap.add_argument("--window", type=int, default=2048,
                     help="inputs sorted by length together (part of the batch plan)")
    cap.add_argument("--shard", default=None, metavar="K/N|auto",
                     help="capture only shard K of N (whole batches, balanced to within one batch); "
                     "'auto' reads K and N from torchrun, SLURM or MPI; with --out DIR/ each "
                     "shard writes DIR/shard-K-of-N.h5; join them with `probe combine`")
    cap.add_argument("--stream", choices=["auto", "batch", "layer"], default="auto",
                     help="batch: write whole batches in a background thread (fast); layer: "
                     "write each layer as soon as it is computed (memory holds one layer: long "
                     "sequences, big models); auto (default): layer for batches whose captured "
                     "tensors would exceed 256 MiB. The file is the same either way")
    cap.add_argument("--quiet", action="store_true", help="no progress bar")
    cap.set_defaults(func=cmd_capture)


def add_combine_parser(sub) -> None:
    """Add ``probe combine`` to the CLI's subparsers."""
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
    from .models import check_device, load_model
    from .readers import input_format, iter_records

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
                              shard=shard, stream=args.stream,
                              pack_causal=not args.no_pack_causal)
    with run:
        size = out.stat().st_size
        print(f"{out}: {len(run)} examples, {run.attrs['n_examples']} in the input, "
              f"{'complete' if run.complete else 'incomplete'}; {size / 1e6:.1f} MB "
              f"({size / max(len(run), 1) / 1e3:.1f} kB per example); layers "
              f"{list(run.layers)}, components {', '.join(run.components)}; dtype "
              f"{run.attrs['dtype']}, compression {run.attrs['compression']}")
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
