"""Integrity of run files: a full disk, damaged bytes, crafted files and interrupted captures.

- a capture onto a full disk stops with one `probe: error:` line, keeps its committed rows,
  leaves no temporary files, and `--resume` completes it once space is free (tmpfs; skipped
  where mounting is not permitted); `probe combine` (view or `--copy`) onto a full disk likewise;
- every data dataset carries fletcher32 checksums; a byte flipped inside a stored chunk makes
  the read fail with the file, key and example named, and `probe verify` report it;
- crafted files (bad counters, a missing dataset, bad metadata) give a clear error;
- runs written without checksums still open and verify;
- SIGINT / SIGTERM during `probe capture` commit or drop the current batch and exit 130 / 143
  with one line; `--resume` then finishes the run to the content of an uninterrupted one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import h5py
import numpy as np
import pytest

from conftest import capture_command, flip_byte_in_chunk, random_sentences
from probe import AttentionProbe, load_model, open_run
from probe.cli import main
from probe.errors import ProbeError
from probe.store import CorruptRunError, is_disk_full, open_file

N = 400


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("integrity")
    src = root / "in.txt"
    src.write_text("\n".join(random_sentences(N)) + "\n")
    ref = root / "ref.h5"
    done = subprocess.run(capture_command(src, ref, tiny_model_dir), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return root, src, ref, tiny_model_dir


def _assert_same_content(path, ref_path):
    """Every committed element of every dataset equal to the reference (same batch plan, so
    same rows in the same order); returns the committed row count."""
    with open_file(path) as f, open_file(ref_path) as g:
        n = int(f["state/n_done"][0])
        assert n == int(g["state/n_done"][0]) and bool(f["state/complete"][0])
        for name in ("example", "n_tokens", "token_start", "square_start", "text_start",
                     "text_len", "meta_start", "meta_len"):
            np.testing.assert_array_equal(f[f"index/{name}"][:n], g[f"index/{name}"][:n], name)

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not name.startswith(("index", "state")):
                end = g[name].shape[0]  # the reference holds exactly its committed data
                assert f[name].shape[0] >= end, name
                np.testing.assert_array_equal(f[name][:end], g[name][:], name)
        g.visititems(visit)
    return n


def _one_error_line(stderr: str, start: str):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(start), stderr[-2000:]
    return lines[0]


# --------------------------------------------------------------------------- full disk
def _mount_tmpfs(path, size):
    path.mkdir(exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small file system to fill")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root): {done.stderr.strip()}")


def _umount(path):
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_disk_full_errors_are_recognised():
    assert is_disk_full(OSError(28, "No space left on device"))
    assert is_disk_full(RuntimeError("Unable to flush file (file write failed: ... errno = 28, "
                                     "error message = 'No space left on device')"))
    assert not is_disk_full(OSError(13, "Permission denied"))


def test_capture_onto_a_full_disk_then_resume(setup):
    root, src, ref, model_dir = setup
    mnt = root / f"full-{uuid.uuid4().hex[:6]}"
    used = os.stat(ref).st_blocks * 512
    _mount_tmpfs(mnt, f"{max(used // 2 // 4096, 16) * 4}k")  # room for about half the run
    try:
        out = mnt / "run.h5"
        done = subprocess.run(capture_command(src, out, model_dir), capture_output=True, text=True)
        assert done.returncode != 0
        line = _one_error_line(done.stderr, f"probe: error: disk full while writing {out}; "
                                             "committed ")
        committed = int(line.split("committed ")[1].split()[0])
        assert line.endswith("free space and rerun with --resume")
        assert sorted(p.name for p in mnt.iterdir()) == ["run.h5"]  # no temp or lock files
        assert 0 < committed < N
        with open_run(out) as partial, open_run(ref) as whole:  # committed data kept
            assert len(partial) == committed and not partial.complete
            for i in (0, committed - 1):
                ex = partial[i]
                want = whole[ex.index]
                assert ex.tokens == want.tokens
                np.testing.assert_array_equal(ex["blocks.1.attn.pattern"],
                                              want["blocks.1.attn.pattern"])
        assert main(["verify", str(out)]) == 0

        # a second try on the still-full disk fails the same clean way
        again = subprocess.run(capture_command(src, out, model_dir, "--resume"), capture_output=True, text=True)
        assert again.returncode != 0
        _one_error_line(again.stderr, "probe: error: disk full while writing")

        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        done = subprocess.run(capture_command(src, out, model_dir, "--resume"), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert _assert_same_content(out, ref) == N
        assert sorted(p.name for p in mnt.iterdir()) == ["run.h5"]
    finally:
        _umount(mnt)


@pytest.mark.parametrize("left,copy", [(0, False), (16384, False), (16384, True)],
                         ids=["no-room-for-the-lock", "room-for-the-lock", "copy"])
def test_combine_onto_a_full_disk(setup, left, copy):
    root, src, ref, model_dir = setup
    mnt = root / f"comb-{uuid.uuid4().hex[:6]}"
    _mount_tmpfs(mnt, "64m")
    try:
        for k in range(2):
            done = subprocess.run(capture_command(src, f"{mnt / 'shards'}/", model_dir, "--shard", f"{k}/2"),
                                  capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
        filler = mnt / "filler"
        with open(filler, "wb") as fh:  # fill what is left
            try:
                while True:
                    fh.write(b"\0" * (1 << 16))
                    fh.flush()
            except OSError:
                pass
        if left:  # leave a little: the lock file fits, the combined file does not
            os.truncate(filler, max(filler.stat().st_size - left, 0))
        out = mnt / "shards" / "all.h5"
        cmd = [sys.executable, "-m", "probe.cli", "combine", str(mnt / "shards"), "--out", str(out),
               *(["--copy"] if copy else [])]
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 2, done.stderr
        _one_error_line(done.stderr, f"probe: error: disk full while writing {out}; nothing was "
                                     "written")
        assert sorted(p.name for p in (mnt / "shards").iterdir()) == [
            "shard-0-of-2.h5", "shard-1-of-2.h5"]
        filler.unlink()
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert main(["verify", str(out)]) == 0
        with open_run(out) as run, open_run(ref) as whole:
            assert len(run) == N
            ex = run[N - 1]
            np.testing.assert_array_equal(ex["blocks.0.attn.pattern"],
                                          whole[N - 1]["blocks.0.attn.pattern"])
    finally:
        _umount(mnt)


# --------------------------------------------------------------------------- checksums
@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def _small_run(tiny, path, **options):
    with AttentionProbe(*tiny, keys=["pattern", "q"]) as p:
        p.run_to_file(random_sentences(40, seed=3), path, batch_size=8, **options).close()
    return path


@pytest.mark.parametrize("compression", ["none", "lzf", "gzip-4"])
def test_every_data_dataset_is_checksummed(tiny, tmp_path, compression):
    path = _small_run(tiny, tmp_path / "run.h5", compression=compression, dtype="float16")
    with h5py.File(path, "r") as f:
        data = []
        f.visititems(lambda name, obj: data.append(obj) if isinstance(obj, h5py.Dataset)
                     and not name.startswith("state") else None)
        assert len(data) >= 15
        for ds in data:
            assert ds.fletcher32 and ds.chunks, ds.name
    assert main(["verify", str(path)]) == 0


def test_a_flipped_byte_is_caught_by_read_and_verify(tiny, tmp_path, capsys):
    path = _small_run(tiny, tmp_path / "run.h5")
    flip_byte_in_chunk(path, "blocks/1/attn/pattern")
    with open_run(path) as run:  # the index is intact: the file opens
        row0 = int(np.argmin(run.index["square_start"]))  # the first row lives in chunk 0
        ex = run[int(run.index["example"][row0])]
        with pytest.raises(CorruptRunError) as info:
            ex["blocks.1.attn.pattern"]
        message = str(info.value)
        assert str(path) in message and "blocks.1.attn.pattern" in message
        assert f"example {ex.index}" in message and "checksum" in message
        ex["blocks.0.attn.pattern"]  # other keys still read
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and "/blocks/1/attn/pattern elements 0.." in out
    assert "fails its checksum" in out


def test_a_damaged_index_chunk_is_a_clear_error(tiny, tmp_path, capsys):
    path = _small_run(tiny, tmp_path / "run.h5")
    flip_byte_in_chunk(path, "index/text_start")
    with pytest.raises(CorruptRunError, match="index/text_start.*checksum"):
        open_run(path)
    assert main(["verify", str(path)]) == 1
    assert "/index/text_start elements 0.." in capsys.readouterr().out


def _craft(tiny, tmp_path, change):
    path = _small_run(tiny, tmp_path / "run.h5")
    with h5py.File(path, "r+") as f:
        change(f)
    return path


def _set_meta(f):
    start, length = int(f["index/meta_start"][2]), int(f["index/meta_len"][2])
    f["examples/meta"][start:start + 2] = np.frombuffer(b"{x", np.uint8)


CRAFTED = {
    "negative n_done": (lambda f: f["state/n_done"].__setitem__(0, -5), "n_done is -5"),
    "huge n_done": (lambda f: f["state/n_done"].__setitem__(0, 1 << 40), "n_done is 1099511627776"),
    "missing dataset": (lambda f: f.__delitem__("tokens/end"), "/tokens/end"),
    "missing tensor": (lambda f: f.__delitem__("blocks/0/attn/q"), "blocks/0/attn/q"),
    "bad offset": (lambda f: f["index/token_start"].__setitem__(3, 10 ** 9), "token_start"),
    "bad meta JSON": (_set_meta, "metadata of example"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_files_give_clear_errors(tiny, tmp_path, capsys, case):
    change, expected = CRAFTED[case]
    path = _craft(tiny, tmp_path, change)
    with pytest.raises(ProbeError, match=expected):
        with open_run(path) as run:
            for ex in run:
                ex.meta
    assert main(["verify", str(path)]) == 1
    captured = capsys.readouterr()
    assert "DAMAGED" in captured.out and expected.split()[-1] in captured.out
    assert "Traceback" not in captured.err


def test_runs_without_checksums_still_open_and_verify(tiny, tmp_path, capsys):
    new = _small_run(tiny, tmp_path / "new.h5")
    old = tmp_path / "old.h5"
    with h5py.File(new, "r") as f, h5py.File(old, "w", libver="latest") as g:
        for k, v in f.attrs.items():
            g.attrs[k] = v

        def copy(name, obj):
            if isinstance(obj, h5py.Dataset):
                kw = {"chunks": obj.chunks, "maxshape": obj.maxshape} if obj.chunks else {}
                ds = g.create_dataset(name, data=obj[()], **kw)
                for k, v in obj.attrs.items():
                    ds.attrs[k] = v
        f.visititems(copy)
    with h5py.File(old, "r") as g:
        assert not g["blocks/0/attn/pattern"].fletcher32
    with open_run(old) as a, open_run(new) as b:
        np.testing.assert_array_equal(a[5]["blocks.1.attn.q"], b[5]["blocks.1.attn.q"])
    assert main(["verify", str(old)]) == 0
    assert "carry no checksums" in capsys.readouterr().out


# --------------------------------------------------------------------------- signals
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_and_resumes(setup, signum):
    root, src, ref, model_dir = setup
    out = root / f"signal-{int(signum)}.h5"
    proc = subprocess.Popen(capture_command(src, out, model_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                with h5py.File(out, "r", libver="latest", swmr=True) as f:
                    if int(f["state/n_done"][0]) >= 40:
                        break
            except Exception:
                pass
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before the signal"
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, stderr
    line = _one_error_line(stderr, "probe: error: interrupted; committed ")
    assert line.endswith("examples; rerun with --resume")
    committed = int(line.split("committed ")[1].split()[0])
    assert 40 <= committed < N
    with open_run(out) as run:
        assert len(run) == committed and not run.complete
    assert not list(root.glob("*.lock")) and not list(root.glob("*.creating-*"))
    done = subprocess.run(capture_command(src, out, model_dir, "--resume"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _assert_same_content(out, ref) == N
