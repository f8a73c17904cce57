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

from conftest import capture_command, random_sentences

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
