"""kill -9 a real capture subprocess at several points; the file must open with every committed
batch intact, and --resume must finish it to the same contents as an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest

from conftest import capture_command, random_sentences
from probe import open_run
from probe.store import open_file

N = 800


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("crash")
    src = root / "in.txt"
    src.write_text("\n".join(random_sentences(N)) + "\n")
    ref = root / "ref.h5"
    done = subprocess.run(capture_command(src, ref, tiny_model_dir), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return root, src, ref, tiny_model_dir


def _committed(path) -> int:
    try:
        with h5py.File(path, "r", libver="latest", swmr=True) as f:
            return int(f["state/n_done"][0])
    except Exception:
        return -1


def _assert_same_rows(path, ref_path):
    """Every committed row of `path` equals the reference byte for byte (same batch plan, so
    same row order): index, token and text streams and every tensor up to the committed end."""
    with open_file(path) as f, h5py.File(ref_path, "r") as g:
        n = int(f["state/n_done"][0])
        if n == 0:
            return 0
        last = {k: int(f[f"index/{k}"][n - 1]) for k in
                ("n_tokens", "token_start", "square_start", "text_start", "text_len")}
        tokens = last["token_start"] + last["n_tokens"]
        squares = last["square_start"] + last["n_tokens"] ** 2
        for name in ("example", "n_tokens", "token_start", "square_start", "text_start", "text_len",
                     "meta_start", "meta_len"):
            np.testing.assert_array_equal(f[f"index/{name}"][:n], g[f"index/{name}"][:n], name)
        np.testing.assert_array_equal(f["tokens/input_ids"][:tokens], g["tokens/input_ids"][:tokens])
        np.testing.assert_array_equal(f["tokens/end"][:tokens], g["tokens/end"][:tokens])
        text_end = last["text_start"] + last["text_len"]
        np.testing.assert_array_equal(f["examples/text"][:text_end], g["examples/text"][:text_end])
        for layer in f["blocks"]:
            for component in f[f"blocks/{layer}/attn"]:
                ds = f[f"blocks/{layer}/attn/{component}"]
                units = tokens if ds.attrs["unit"] == "token" else squares
                end = units * int(ds.attrs["per_unit"])
                np.testing.assert_array_equal(ds[:end], g[ds.name][:end], ds.name)
        return n


def _assert_same_examples(run, ref, count=None, sample=40):
    """Example by example through the reader, on a sample spread over the run."""
    if count is not None:
        assert len(run) == count
    step = max(len(run) // sample, 1)
    for i in list(range(0, len(run), step)) + [len(run) - 1] if len(run) else []:
        ex = run[i]
        want = ref[ex.index]
        assert (ex.tokens, ex.text, ex.meta) == (want.tokens, want.text, want.meta)
        for key in want:
            np.testing.assert_array_equal(ex[key], want[key], err_msg=f"{ex.index} {key}")


@pytest.mark.parametrize("kill_after", [1, 300, 720, "random"])
def test_kill_and_resume(setup, kill_after):
    root, src, ref_path, model_dir = setup
    out = root / f"killed-{kill_after}.h5"
    proc = subprocess.Popen(capture_command(src, out, model_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        if kill_after == "random":
            time.sleep(random.Random(os.getpid()).uniform(0.5, 6.0))
        else:
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None:
                if out.exists() and _committed(out) >= kill_after:
                    break
                time.sleep(0.02)
        if proc.poll() is not None and kill_after != "random":
            pytest.fail(f"the run ended before the kill point ({proc.returncode}): "
                        f"{proc.stderr.read().decode()[-500:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # a random kill time can fall after the run ended
            pass
        proc.wait()

    with open_run(ref_path) as ref:
        if out.exists():
            with open_run(out) as partial:  # opens after kill -9, committed rows intact
                n = len(partial)
                assert not partial.complete or n == N
                if kill_after != "random":
                    assert n >= kill_after
                _assert_same_examples(partial, ref, count=n)
            assert _assert_same_rows(out, ref_path) == n
        done = subprocess.run(capture_command(src, out, model_dir, "--resume"), capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr
        with open_run(out) as final:
            assert final.complete and len(final) == N
            assert [e.index for e in final] == list(range(N))
            _assert_same_examples(final, ref, count=N)
        assert _assert_same_rows(out, ref_path) == N
    assert not list(root.glob("*.creating-*")) or kill_after == "random"


def test_reader_follows_a_run_being_written(setup):
    root, src, _, model_dir = setup
    out = root / "live.h5"
    proc = subprocess.Popen(capture_command(src, out, model_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out.exists() and _committed(out) > 0) and time.time() < deadline:
            time.sleep(0.01)
        with open_run(out) as run:  # opened while the writer is running (SWMR)
            first = len(run)
            assert first > 0 and run[0].tokens
            proc.wait(timeout=120)
            run.refresh()
            assert len(run) == N and run.complete and len(run) >= first
    finally:
        proc.kill()
        proc.wait()
