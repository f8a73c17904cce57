"""Peak memory of `probe capture --out` against the number of sentences, one process per size.

Each size runs `probe capture` on generated sentences of 10-25 words in a fresh Python process
(bundled MiniLM, batch 32). The child samples its own resident set every 0.2 s and reports its
peak (VmHWM) and the resident set at 25/50/75/100% of the run's time, so growth during the run
shows separately from the start-up peak. Prints peak RSS per size and the ratio to the smallest.

    python benchmarks/memory.py [--sizes 2000,20000,200000] [--keys pattern] [--dtype float16]
                                [--dir DIR] [--layers 0,5]

`--keys` takes probe's key list (`all` for the default keys). Large sizes write large files
(pattern in float16 is about 67 kB a sentence); each file is deleted after its size is measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sentences import sentences  # noqa: E402

CHILD = r"""
import json, sys, threading, time
from probe.cli import main

import ctypes
samples = []
class MallInfo(ctypes.Structure):  # glibc's mallinfo2: heap size, in use, free (all arenas)
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
def heap():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo
        m = libc.mallinfo2()
        return {"heap": m.arena / 2**20, "in_use": m.uordblks / 2**20, "free": m.fordblks / 2**20,
                "mmapped": m.hblkhd / 2**20}
    except (OSError, AttributeError):
        return {}
heaps = []
def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
def sample():
    while True:
        samples.append((time.perf_counter(), status("VmRSS:")))
        if len(samples) % 25 == 0:
            heaps.append(heap())
        time.sleep(0.2)
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
rc = main(sys.argv[1:])
t1 = time.perf_counter()
def at(frac):
    target = t0 + frac * (t1 - t0)
    return max([r for t, r in samples if t <= target] or [0.0])
print("RESULT " + json.dumps({"rc": rc, "seconds": t1 - t0, "hwm": status("VmHWM:"),
                              "rss_at": [at(x) for x in (0.25, 0.5, 0.75, 1.0)],
                              "heap": max(heaps, key=lambda h: h.get("heap", 0), default={})}))
sys.exit(rc)
"""


def run_size(n: int, directory: Path, keys: str, dtype: str, layers: str | None) -> dict:
    src = directory / f"mem-{n}.txt"
    with open(src, "w") as f:
        for start in range(0, n, 10000):  # generated in slices: this process stays small
            f.write("\n".join(sentences(min(10000, n - start), seed=start + 7)) + "\n")
    out = directory / f"mem-{n}.h5"
    if out.exists():
        out.unlink()
    args = ["capture", str(src), "--out", str(out), "--dtype", dtype, "--quiet"]
    if keys != "all":
        args += ["--keys", keys]
    if layers:
        args += ["--layers", layers]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-4000:])
    result = json.loads([x for x in done.stdout.splitlines() if x.startswith("RESULT ")][0][7:])
    result["file_gb"] = out.stat().st_size / 1e9
    out.unlink()
    src.unlink()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2000,20000")
    ap.add_argument("--keys", default="pattern")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--layers", default=None)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    directory = Path(args.dir or tempfile.mkdtemp(prefix="probe-mem-"))
    directory.mkdir(parents=True, exist_ok=True)
    sizes = [int(x) for x in args.sizes.split(",")]
    print(f"[memory] `probe capture --out` (bundled MiniLM, batch 32, --keys {args.keys}, "
          f"--dtype {args.dtype}{', --layers ' + args.layers if args.layers else ''}), "
          "one process per size")
    print(f"  {'sentences':>9} {'peak RSS MiB':>12} {'ratio':>6} {'RSS at 25/50/75/100% of the run (MiB)':>40}"
          f" {'seconds':>8} {'file GB':>8}")
    base = None
    for n in sizes:
        r = run_size(n, directory, args.keys, args.dtype, args.layers)
        base = base or r["hwm"]
        along = " / ".join(f"{x:.0f}" for x in r["rss_at"])
        h = r["heap"]
        heap = (f"   malloc heap at its largest: {h['heap']:.0f} MiB, in use {h['in_use']:.0f}, "
                f"free {h['free']:.0f}; mmapped {h['mmapped']:.0f}" if h else "")
        print(f"  {n:9d} {r['hwm']:12.1f} {r['hwm'] / base:6.3f} {along:>40} {r['seconds']:8.1f}"
              f" {r['file_gb']:8.2f}{heap}", flush=True)


if __name__ == "__main__":
    main()
