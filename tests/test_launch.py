"""--shard auto: rank and world size from torchrun, SLURM and MPI environments; shard folders."""

from __future__ import annotations

import os

import numpy as np
import pytest

from probe import InputError
from probe.launch import shard_from_env, shard_path


@pytest.mark.parametrize("env,expected", [
    ({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}, (2, 4, 0, "torchrun")),
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "5"},
     (2, 4, None, "SLURM array")),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1"}, (1, 2, 1, "SLURM")),
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8"}, (3, 8, None, "Open MPI")),
    ({"PMI_RANK": "0", "PMI_SIZE": "2"}, (0, 2, None, "PMI")),
    ({"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "9"}, (1, 2, None, "torchrun")),
    ({"SLURM_PROCID": "0"}, (0, 1, None, "none")),
])
def test_launcher_environments(env, expected):
    assert tuple(shard_from_env(env)) == expected


def test_bad_launcher_values():
    with pytest.raises(InputError, match="RANK=5 is outside 0..1"):
        shard_from_env({"RANK": "5", "WORLD_SIZE": "2"})
    with pytest.raises(InputError, match="is not an integer"):
        shard_from_env({"PMI_RANK": "x", "PMI_SIZE": "2"})
    assert shard_path("runs/", 0, 2) == os.path.join("runs", "shard-0-of-2.h5")
    assert shard_path("run.h5", 0, 2) == "run.h5"


@pytest.mark.slow
def test_shard_auto_ranks_combine_to_the_unsharded_run(tmp_path, tiny_model_dir, monkeypatch):
    from probe import open_run
    from probe.cli import main

    texts = tmp_path / "in.txt"
    texts.write_text("\n".join(f"Sentence number {i} is here{'.' * (i % 3 + 1)}" for i in range(7)) + "\n")
    common = ["capture", str(texts), "--model", str(tiny_model_dir), "--keys", "pattern,z",
              "--window", "2", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "whole.h5")]) == 0
    for rank in range(3):  # as SLURM would start them, one process each
        monkeypatch.setenv("SLURM_PROCID", str(rank))
        monkeypatch.setenv("SLURM_NTASKS", "3")
        assert main([*common, "--shard", "auto", "--out", str(tmp_path / "shards") + "/"]) == 0
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "shard-0-of-3.h5", "shard-1-of-3.h5", "shard-2-of-3.h5"]
    assert main(["combine", str(tmp_path / "shards"), "--out", str(tmp_path / "all.h5")]) == 0
    with open_run(tmp_path / "whole.h5") as a, open_run(tmp_path / "all.h5") as b:
        assert len(a) == len(b) == 7 and b.complete
        for i in range(7):
            assert a[i].text == b[i].text
            for key in a.keys:
                assert np.array_equal(a[i][key], b[i][key]), (i, key)
