"""Store benchmarks on the bundled MiniLM (batch 32). Each section prints its own baseline.

  overhead  capture-and-write (float16 pattern, q, k, v, all layers) against capture alone,
            interleaved in one process over the same batch plan, with 2 and with 1 torch
            threads (both cores busy / a core free), side by side; the writer as it is
            (one-copy packing) and as it was (two copies); the run's write throughput against
            this disk's sequential write bandwidth (a large array written with fsync)
  memory    peak RSS of a whole `probe capture` subprocess at 2,000 and at 20,000 sentences
  access    random access of one example (every stored key) in the 20,000-example file
  sizes     file size per example for each dtype / compression choice

    python benchmarks/store.py [overhead] [memory] [access] [sizes] [--dir DIR]
                               [--n 2000] [--rounds 5] [--threads 2,1]

benchmarks/memory.py measures memory against N more thoroughly (up to 200,000 sentences).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sentences import sentences  # noqa: E402

from probe import AttentionProbe, load_model, open_run  # noqa: E402
from probe.inputs import batches_by_length, encode  # noqa: E402

KEYS = ["pattern", "q", "k", "v"]


def disk_bandwidth(directory: Path, size_mb: int = 1024) -> float:
    """MB/s of one large sequential write with fsync (the disk's ceiling for a run)."""
    data = np.random.default_rng(0).integers(0, 255, size_mb << 20, dtype=np.uint8)
    path = directory / "bandwidth.bin"
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        f.write(data.tobytes())
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - t0
    path.unlink()
    return size_mb * 1.048576 / seconds


def _two_copy_append(append):
    """RunWriter.append as it was before one-copy packing (a per-key unpadding gather into
    new tensors, then a concatenation): the 'before' condition."""
    import torch as _torch

    from probe import names
    from probe.captures import CapturedBatch
    from probe.packing import unpad_index

    def pack(batch, key, dtype):
        _, component = names.parse_key(key)
        t = _torch.from_numpy(batch.arrays[key])
        target = _torch.from_numpy(np.empty(0, dtype)).dtype
        if t.dtype != target:
            t = t.to(target)
        return _torch.cat([t[row][unpad_index(component, a, b)].reshape(-1)
                           for row, (a, b) in enumerate(batch.spans)]).numpy()

    def old(self, rows, packed):
        if isinstance(packed, CapturedBatch):
            packed = {k: pack(packed, k, self.dtype) for k in self.stored_keys}
        return append(self, rows, packed)

    return old


def overhead(directory: Path, n: int = 2000, rounds: int = 5, threads=(2, 1)) -> None:
    """Capture alone against capture-and-write, with both cores running the forward pass
    (2 intra-op threads) and with a core left free (1 thread), all conditions interleaved
    round by round in this process; ratios are against capture alone at the same threads."""
    from probe import runner
    from probe.store import RunWriter

    model, tokenizer = load_model()
    texts = sentences(n, seed=1)
    enc = encode(tokenizer, texts, max_length=512)
    plan = [b for w in range(0, n, 2048)
            for b in ([w + i for i in rows] for rows in
                      batches_by_length([len(x) for x in enc.ids[w:w + 2048]], 32))]
    setup = {"s": 0.0}
    for name in ("validate_input", "provenance", "key_sizes"):
        fn = getattr(runner, name)

        def timed(*a, _fn=fn, **k):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                setup["s"] += time.perf_counter() - t0
        setattr(runner, name, timed)
    one_copy = RunWriter.append
    two_copies = _two_copy_append(one_copy)

    with AttentionProbe(model, tokenizer, keys=KEYS) as p:
        def capture_only():
            t0 = time.perf_counter()
            for rows in plan:  # the padded batch arrays, kept in memory until the next batch
                p.capture_ids([enc.ids[i] for i in rows])
            return time.perf_counter() - t0, 0.0, 0

        def capture_and_write(append, i=[0]):
            i[0] += 1
            path = directory / f"overhead-{i[0]}.h5"
            setup["s"] = 0.0
            RunWriter.append = append
            try:
                t0 = time.perf_counter()
                run = p.run_to_file(texts, path, dtype="float16")
                run.close()
                seconds = time.perf_counter() - t0
            finally:
                RunWriter.append = one_copy
            size = path.stat().st_size
            path.unlink()
            return seconds, setup["s"], size

        conditions = {"capture alone (in memory)": capture_only,
                      "capture and write, one-copy packing": lambda: capture_and_write(one_copy),
                      "capture and write, two-copy packing (before)": lambda: capture_and_write(two_copies)}
        times = {(t, c): [] for t in threads for c in conditions}
        setups = {(t, c): [] for t in threads for c in conditions}
        size = 0
        for t in threads:  # warm-up
            torch.set_num_threads(t)
            capture_only()
        for _ in range(rounds):
            for t in threads:
                torch.set_num_threads(t)
                for c, fn in conditions.items():
                    os.sync()  # the previous file's write-back does not land on this condition
                    seconds, setup_s, got = fn()
                    size = got or size
                    times[t, c].append(seconds)
                    setups[t, c].append(setup_s)
    med = {k: statistics.median(v) for k, v in times.items()}
    st = {k: statistics.median(v) for k, v in setups.items()}
    bandwidth = disk_bandwidth(directory)
    print(f"[overhead] MiniLM, {n} sentences, batch 32, float16 {'/'.join(KEYS)} of all layers, "
          f"median of {rounds} interleaved rounds; time ratio to capture alone at the same threads")
    head = "".join(f" | {t} thread{'s' if t > 1 else ''}: s, ratio, ratio w/o set-up" for t in threads)
    print(f"  {'condition':<46}{head}")
    for c in conditions:
        cells = []
        for t in threads:
            base = med[t, "capture alone (in memory)"]
            cells.append(f" | {med[t, c]:7.2f} s {med[t, c] / base:6.3f} {(med[t, c] - st[t, c]) / base:6.3f}")
        print(f"  {c:<46}{''.join(cells)}")
    print(f"  (set-up: input validation pass, model fingerprint, shape probe: "
          f"{statistics.median(st.values() or [0]):.2f} s median; 2 threads = both cores run the "
          "forward, 1 thread = a core left free for the writer)")
    best = min(med[t, "capture and write, one-copy packing"] for t in threads)
    print(f"  file {size / 1e6:.1f} MB, written at {size / 1e6 / best:.1f} MB/s (fastest one-copy "
          f"condition); disk sequential write with fsync {bandwidth:.0f} MB/s")


def _capture_subprocess(src: Path, out: Path, keys: str = ",".join(KEYS)) -> tuple[float, float]:
    code = ("import resource, sys, time; from probe.cli import main; t=time.perf_counter(); "
            f"rc=main(['capture', {str(src)!r}, '--out', {str(out)!r}, '--dtype', 'float16', "
            f"'--keys', {keys!r}, '--quiet']); "
            "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
            "time.perf_counter()-t); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    line = [x for x in done.stdout.splitlines() if x.startswith("RSS")][0].split()
    return int(line[1]) / 1024, float(line[2])


def memory(directory: Path) -> Path:
    results = {}
    big = directory / "20000.h5"
    for n in (2000, 20000):
        src = directory / f"{n}.txt"
        src.write_text("\n".join(sentences(n, seed=2)) + "\n")
        out = directory / f"{n}.h5"
        if out.exists():
            out.unlink()
        results[n] = _capture_subprocess(src, out)
    print("[memory] peak RSS of a whole `probe capture --dtype float16 --keys pattern,q,k,v` process")
    for n, (rss, seconds) in results.items():
        print(f"  {n:6d} sentences: peak RSS {rss:7.1f} MiB, {seconds:6.1f} s, file "
              f"{(directory / f'{n}.h5').stat().st_size / 1e9:.2f} GB")
    print(f"  ratio 20,000 / 2,000: {results[20000][0] / results[2000][0]:.3f}")
    return big


def _drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def access(path: Path, samples: int = 200) -> None:
    rng = np.random.default_rng(0)
    for label in ("cold", "warm"):
        if label == "cold" and not _drop_caches():
            print("  (cannot drop the page cache here: cold reads not measured)")
            continue
        with open_run(path) as run:
            picks = rng.integers(0, len(run), samples)
            times = []
            for i in picks:
                t0 = time.perf_counter()
                ex = run[int(i)]
                for key in run.keys:
                    ex[key]
                times.append((time.perf_counter() - t0) * 1e3)
            n = len(run)
        print(f"[access] {label}: one random example, all {len(run.keys)} keys, from {n} examples: "
              f"median {statistics.median(times):.2f} ms, p95 {np.percentile(times, 95):.2f} ms, "
              f"max {max(times):.2f} ms")


def sizes(directory: Path, n: int = 300) -> None:
    model, tokenizer = load_model()
    texts = sentences(n, seed=3)
    print(f"[sizes] {n} sentences of 10-25 words (mean {np.mean([len(tokenizer(t).input_ids) for t in texts]):.1f} tokens)")
    print("  keys              dtype    compression  kB/example  write s")
    for keys in (None, KEYS, ["pattern"]):
        with AttentionProbe(model, tokenizer, keys=keys) as p:
            for dtype, comp in (("float32", "none"), ("float16", "none"), ("float16", "lzf"),
                                ("float32", "gzip-4"), ("float16", "gzip-4")):
                path = directory / f"size-{dtype}-{comp}.h5"
                t0 = time.perf_counter()
                p.run_to_file(texts, path, dtype=dtype, compression=comp).close()
                seconds = time.perf_counter() - t0
                label = "all" if keys is None else ",".join(keys)
                print(f"  {label:<17} {dtype:<8} {comp:<12} {path.stat().st_size / n / 1e3:10.1f}"
                      f"  {seconds:7.2f}")
                path.unlink()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sections", nargs="*", default=["overhead", "memory", "access", "sizes"])
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--threads", default="2,1",
                    help="torch intra-op thread counts compared by the overhead section")
    ap.add_argument("--n", type=int, default=2000, help="sentences in the overhead section")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (overhead)")
    args = ap.parse_args()
    directory = Path(args.dir or tempfile.mkdtemp(prefix="probe-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    print(f"torch threads {torch.get_num_threads()}, files in {directory}")
    if "overhead" in args.sections:
        overhead(directory, n=args.n, rounds=args.rounds,
                 threads=tuple(int(x) for x in args.threads.split(",")))
    big = directory / "20000.h5"
    if "memory" in args.sections:
        big = memory(directory)
    if "access" in args.sections:
        if not big.exists():
            raise SystemExit("access needs the 20,000-example file: run the memory section first")
        access(big)
    if "sizes" in args.sections:
        sizes(directory)


if __name__ == "__main__":
    main()
