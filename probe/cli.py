"""The ``probe`` command line: parse arguments, call the library, report.

Subcommands:

- ``probe capture [INPUT]``: capture attention of texts (one per line; default: the bundled
  example sentences) on a model (default: the bundled MiniLM) and print a summary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ProbeError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def bundled(name: str) -> Path:
    path = DATA_DIR / name
    if not path.exists():
        raise ProbeError(f"bundled data file {path} is missing; run from a checkout of probe "
                         "(pip install -e .) or pass your own file")
    return path


def _read_lines(path: Path) -> list[str]:
    from .errors import InputError

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"input file {path} does not exist") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not valid UTF-8 ({err.reason}); re-encode the file "
                         "as UTF-8") from None
    return [line for line in text.splitlines() if line.strip()]


def _summary(capture, out=sys.stdout) -> None:
    import numpy as np

    from .metrics import first_token_attention, mean_row_entropy

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
            pattern = ex[f"blocks.{layer}.attn.pattern"]
            ent = mean_row_entropy(pattern).mean()
            first = first_token_attention(pattern)
            top = int(np.argmax(first))
            print(f"    layer {layer}: entropy {ent:.2f} ({np.log(n):.2f}) | first token "
                  f"{first.mean():.2f} (max head {top}: {first[top]:.2f})", file=out)


def cmd_capture(args) -> int:
    from .capture import AttentionProbe
    from .models import load_model

    path = Path(args.input) if args.input else bundled("sentences.txt")
    texts = _read_lines(path)
    model, tokenizer = load_model(args.model, device=args.device)
    keys = args.keys.split(",") if args.keys else None
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    with AttentionProbe(model, tokenizer, layers=layers, keys=keys) as p:
        capture = p.run(texts, batch_size=args.batch_size, truncate=args.truncate)
    _summary(capture)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probe", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("capture", help="capture attention of texts and print a summary")
    cap.add_argument("input", nargs="?", help="text file, one sentence a line "
                     "(default: the bundled example sentences)")
    cap.add_argument("--model", default=None,
                     help="hub name or local folder (default: bundled all-MiniLM-L6-v2)")
    cap.add_argument("--layers", help="comma-separated layer indices (default: all)")
    cap.add_argument("--keys", help="comma-separated components or full keys (default: all)")
    cap.add_argument("--batch-size", type=int, default=32)
    cap.add_argument("--device", default="cpu")
    cap.add_argument("--truncate", action="store_true",
                     help="cut texts longer than the model's maximum instead of refusing them")
    cap.set_defaults(func=cmd_capture)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        return args.func(args)
    except ProbeError as err:
        print(f"probe: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
