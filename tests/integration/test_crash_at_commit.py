"""kill -9 a real capture at the exact moment of a commit (a batch fully written and flushed,
``/state/n_done`` not yet advanced), then ``--resume``: the finished file must equal an
uninterrupted run dataset by dataset, lengths included.

Readers never look past ``n_done`` and a resumed run rewrites the same batch, so comparing rows
(what test_crash_resume does) cannot tell whether the resume dropped the killed batch's rows
first; without that truncation every dataset keeps the killed batch's rows as dead data and
the resumed batch lands after them. This test fails when ``RunWriter.reopen`` skips
``_truncate``."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import capture_command, flip_byte_in_chunk, random_sentences

# the capture CLI, killed (SIGKILL, by itself) when it is about to commit batch KILL_AT
_KILL_AT_COMMIT = """
import os, signal, sys
import h5py
from probe.cli import main

KILL_AT = int(sys.argv[1])
real = h5py.Dataset.__setitem__
commits = []

def setitem(self, index, value):
    if self.name == "/state/n_done":
        commits.append(value)
        if len(commits) == KILL_AT:
            self.file.flush()  # the batch's rows are on disk; the commit never happens
            os.kill(os.getpid(), signal.SIGKILL)
    return real(self, index, value)

h5py.Dataset.__setitem__ = setitem
sys.exit(main(sys.argv[2:]))
"""


def _datasets(path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def test_resume_after_a_kill_at_commit_equals_an_uninterrupted_run(tmp_path, tiny_model_dir):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(random_sentences(40, seed=3)) + "\n")  # 5 batches of 8
    ref, out = tmp_path / "ref.h5", tmp_path / "killed.h5"
    done = subprocess.run(capture_command(src, ref, tiny_model_dir), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    killed = subprocess.run([sys.executable, "-c", _KILL_AT_COMMIT, "3",
                             *capture_command(src, out, tiny_model_dir)[3:]],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-1000:]
    with h5py.File(out, "r", libver="latest", swmr=True) as f:
        assert int(f["state/n_done"][0]) == 16  # two batches committed
        # the third batch's rows are on disk past the commit: what a resume must drop
        assert f["index/example"].shape[0] == 24

    resumed = subprocess.run(capture_command(src, out, tiny_model_dir, "--resume"),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    want, got = _datasets(ref), _datasets(out)
    assert sorted(got) == sorted(want)
    for name, data in want.items():
        assert got[name].shape == data.shape, f"{name}: {got[name].shape} != {data.shape}"
        np.testing.assert_array_equal(got[name], data, err_msg=name)


def _committed_end(path, name) -> tuple[int, int]:
    """``(values the committed rows take in dataset name, its chunk size)``."""
    from probe.store.layout import committed_extent
    from probe.store.tensors import tensor_attrs

    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        ds, n = f[name], int(f["state/n_done"][0])
        extent = committed_extent(f, n)
        if name.startswith("index/"):
            end = n
        elif name in ("tokens/end", "tokens/input_ids"):
            end = extent["token"]
        elif name in extent:
            end = extent[name]
        else:
            unit, per_unit, _ = tensor_attrs(ds)
            end = extent[unit] * per_unit
        return end, ds.chunks[0]


@pytest.mark.parametrize("name,extra", [
    ("index/n_tokens", ()), ("tokens/end", ()), ("examples/text", ()),
    ("blocks/1/attn/q", ()), ("blocks/1/attn/q", ("--compression", "lzf")),
    ("blocks/1/attn/q", ("--stream", "layer")),
])
def test_resume_gives_up_rows_in_a_chunk_torn_by_the_kill(tmp_path, tiny_model_dir, name, extra):
    """A kill during the next batch's write can tear the chunk that also holds the last
    committed rows: it fails its checksum, and shrinking the dataset to the commit must read
    it. The resume must move the commit back before that chunk (saying so), capture those
    rows again, and end equal to an uninterrupted run. On the tensor the commit moves back
    into the middle of a batch: the resume captures that batch whole and writes its rest."""
    src = tmp_path / "in.txt"
    src.write_text("\n".join(random_sentences(40, seed=3)) + "\n")
    ref, out = tmp_path / "ref.h5", tmp_path / "killed.h5"
    done = subprocess.run(capture_command(src, ref, tiny_model_dir, *extra),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    killed = subprocess.run([sys.executable, "-c", _KILL_AT_COMMIT, "3",
                             *capture_command(src, out, tiny_model_dir, *extra)[3:]],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-1000:]
    end, chunk = _committed_end(out, name)
    assert end % chunk, f"{name}: the commit must end inside a chunk for this test"
    flip_byte_in_chunk(out, name, holding=end - 1)
    with h5py.File(out, "r", libver="latest", swmr=True) as f, pytest.raises(OSError):
        f[name][end - end % chunk:end]  # the committed rows in that chunk no longer read

    resumed = subprocess.run(capture_command(src, out, tiny_model_dir, "--resume", *extra),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "probe: warning:" in resumed.stderr and f"/{name} (rows " in resumed.stderr, \
        resumed.stderr
    assert "Traceback" not in resumed.stderr
    want, got = _datasets(ref), _datasets(out)
    for key, data in want.items():
        assert got[key].shape == data.shape, f"{key}: {got[key].shape} != {data.shape}"
        np.testing.assert_array_equal(got[key], data, err_msg=key)
