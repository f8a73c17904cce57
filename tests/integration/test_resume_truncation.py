"""Resume drops what an interrupted batch left past the last commit, before appending.

Readers never look past ``/state/n_done``, but the truncation is not cosmetic: after a kill at
the moment of a commit, a resume that skipped it refuses the file as inconsistent
(tests/integration/test_crash_at_commit.py). It guarantees that a reopened file holds nothing
uncommitted, whatever happens next. This test fails when reopening skips it, for square
datasets (BERT) and for packed triangles (a causal Llama)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import _tiny
from probe import AttentionProbe
from probe.store import RunWriter, open_run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("arch, unit", [("bert", "square"), ("llama", "triangle")])
def test_reopen_truncates_a_partial_batch(tmp_path, tokenizer, arch, unit):
    path = tmp_path / "run.h5"
    with AttentionProbe(_tiny(arch), tokenizer, keys=["pattern", "z"]) as p:
        p.run_to_file([f"Sentence {i} is short." for i in range(6)], path).close()
    with h5py.File(path, "r+") as f:
        committed = {}

        def grow(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.maxshape[0] is None and not name.startswith("state"):
                committed[name] = obj.shape[0]
                obj.resize((obj.shape[0] + 7,))  # garbage of a batch that never committed
                obj[-7:] = 1
        f.visititems(grow)
        f["state/complete"][0] = 0
        assert f["blocks/1/attn/pattern"].attrs["unit"] == unit
    assert committed
    writer = RunWriter.reopen(path, dtype="float32")
    try:
        f = writer.f
        for name, length in committed.items():
            assert f[name].shape[0] == length, name
    finally:
        writer.close()
    with open_run(path) as run:
        assert len(run) == 6 and np.isfinite(run[5]["blocks.1.attn.z"]).all()
        assert np.isfinite(run[5]["blocks.1.attn.pattern"]).all()
