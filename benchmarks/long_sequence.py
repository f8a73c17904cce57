"""Peak memory of `probe capture --out` on one long sequence, against one layer's pattern.

A tiny random Llama (grouped-query attention, 4 query heads, 2 key/value heads, hidden size 128)
is saved with the bundled MiniLM tokenizer (limit raised to the sequence length); each case
runs `probe capture` on one text of ``--tokens`` tokens in a fresh Python process that samples
its own resident set. Reported: the peak RSS above the process's RSS just before the capture
(model loaded, libraries imported), as a multiple of one layer's float32 pattern
(heads x tokens x tokens x 4 bytes). Issue 12's goal: under 3x, whatever the number of layers.

    python benchmarks/long_sequence.py [--tokens 4096] [--layers 2,8] [--keys pattern,all]
                                       [--stream auto,batch]

`--stream batch` is the batch mode (every layer of a batch held until the batch is written),
for comparison; `auto` streams each layer to the file as soon as it is computed when a
batch's tensors would be large (see README, "Long sequences").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HEADS, KV_HEADS, HIDDEN = 4, 2, 128

CHILD = r"""
import json, sys, threading, time
def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
from probe.cli import main
import probe.runner, probe.models  # imported before the baseline is taken
import torch
from transformers import AutoModel
AutoModel.from_pretrained(sys.argv[1])  # warm the loader's own allocations once
base = status("VmRSS:")
peak = [base]
def sample():
    while True:
        peak.append(status("VmRSS:"))
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
rc = main(["capture", *sys.argv[2:], "--model", sys.argv[1]])
t1 = time.perf_counter()
print("RESULT " + json.dumps({"rc": rc, "seconds": t1 - t0, "base": base,
                              "hwm": status("VmHWM:"), "sampled_peak": max(peak)}))
sys.exit(rc)
"""


def make_model(directory: Path, layers: int, tokens: int) -> Path:
    import torch
    import transformers as T

    from probe import load_model

    _, tokenizer = load_model()
    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=HIDDEN,
                           num_hidden_layers=layers, num_attention_heads=HEADS,
                           num_key_value_heads=KV_HEADS, intermediate_size=256,
                           max_position_embeddings=tokens + 8, pad_token_id=0)
    model = T.LlamaModel(config).eval()
    where = directory / f"llama-{layers}"
    model.save_pretrained(where)
    tokenizer.model_max_length = tokens + 8
    tokenizer.save_pretrained(where)
    return where


def text_of(tokens: int) -> str:
    words = "the cat sat on a mat and saw one bird fly over the old red barn".split()
    return " ".join(words[i % len(words)] for i in range(tokens - 2))  # + [CLS] and [SEP]


def run_case(model_dir: Path, directory: Path, keys: str, stream: str, dtype: str) -> dict:
    src = directory / "long.txt"
    out = directory / "long.h5"
    if out.exists():
        out.unlink()
    args = [str(model_dir), str(src), "--out", str(out), "--dtype", dtype, "--quiet",
            "--stream", stream]
    if keys != "all":
        args += ["--keys", keys]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-4000:])
    result = json.loads([x for x in done.stdout.splitlines() if x.startswith("RESULT ")][0][7:])
    result["file_mb"] = out.stat().st_size / 2**20
    out.unlink()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--layers", default="2,8")
    ap.add_argument("--keys", default="pattern,all")
    ap.add_argument("--stream", default="auto,batch")
    ap.add_argument("--dtype", default="float16")
    args = ap.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="probe-long-"))
    (directory / "long.txt").write_text(text_of(args.tokens) + "\n")
    pattern_mib = HEADS * args.tokens ** 2 * 4 / 2**20
    print(f"[long sequence] tiny Llama ({HEADS} heads, {KV_HEADS} kv heads, hidden {HIDDEN}), "
          f"one text of {args.tokens} tokens, --dtype {args.dtype}; one layer's float32 pattern "
          f"= {pattern_mib:.0f} MiB")
    print(f"  {'layers':>6} {'keys':>8} {'stream':>6} {'RSS before MiB':>14} {'peak MiB':>9}"
          f" {'above MiB':>9} {'x pattern':>9} {'seconds':>8} {'file MiB':>9}")
    for layers in (int(x) for x in args.layers.split(",")):
        model_dir = make_model(directory, layers, args.tokens)
        for keys in args.keys.split(","):
            for stream in args.stream.split(","):
                r = run_case(model_dir, directory, keys, stream, args.dtype)
                peak = max(r["hwm"], r["sampled_peak"])
                above = peak - r["base"]
                print(f"  {layers:6d} {keys:>8} {stream:>6} {r['base']:14.0f} {peak:9.0f}"
                      f" {above:9.0f} {above / pattern_mib:9.2f} {r['seconds']:8.1f}"
                      f" {r['file_mb']:9.0f}", flush=True)


if __name__ == "__main__":
    main()
