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
              "--batch-size", "3", "--quiet"]  # one window: 3 batches (3, 3, 1)
    assert main([*common, "--out", str(tmp_path / "whole.h5")]) == 0
    for rank in range(3):  # as SLURM would start them, one process each
        monkeypatch.setenv("SLURM_PROCID", str(rank))
        monkeypatch.setenv("SLURM_NTASKS", "3")
        assert main([*common, "--shard", "auto", "--out", str(tmp_path / "shards") + "/"]) == 0
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "shard-0-of-3.h5", "shard-1-of-3.h5", "shard-2-of-3.h5"]
    sizes = []
    for k in range(3):
        with open_run(tmp_path / "shards" / f"shard-{k}-of-3.h5") as shard:
            sizes.append(len(shard))
    # examples 0-1, 2-3 and 4-6 in plan order: shards 0 and 1 share the first batch, shards 1
    # and 2 the second, each computing it whole and writing its own rows
    assert sizes == [2, 2, 3]
    assert main(["combine", str(tmp_path / "shards"), "--out", str(tmp_path / "all.h5")]) == 0
    with open_run(tmp_path / "whole.h5") as a, open_run(tmp_path / "all.h5") as b:
        assert len(a) == len(b) == 7 and b.complete
        for i in range(7):
            assert a[i].text == b[i].text
            for key in a.keys:
                assert np.array_equal(a[i][key], b[i][key]), (i, key)


@pytest.mark.slow
def test_a_shard_without_an_example_is_a_warning_and_an_empty_finished_file(tmp_path,
                                                                           tiny_model_dir,
                                                                           capsys):
    from probe import open_run
    from probe.cli import main

    texts = tmp_path / "in.txt"
    texts.write_text("One sentence.\n")
    out = tmp_path / "s0.h5"
    assert main(["capture", str(texts), "--model", str(tiny_model_dir), "--keys", "pattern",
                 "--shard", "0/2", "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "probe: warning: shard 0/2" in err and "holds no example" in err, err
    assert "1 example(s) for 2 shards" in err
    with open_run(out) as run:
        assert len(run) == 0 and run.complete


@pytest.mark.slow
def test_shards_of_two_sentences_get_one_each(tmp_path, tiny_model_dir):
    from probe import open_run
    from probe.cli import main

    texts = tmp_path / "in.txt"
    texts.write_text("One sentence.\nTwo short sentences here.\n")  # one batch of 2
    for k in range(2):
        assert main(["capture", str(texts), "--model", str(tiny_model_dir), "--keys", "pattern",
                     "--shard", f"{k}/2", "--out", str(tmp_path / f"s{k}.h5"), "--quiet"]) == 0
        with open_run(tmp_path / f"s{k}.h5") as run:
            assert len(run) == 1 and run.complete


def _worker_pids(rank: int) -> list[int]:
    """Processes started by torchrun (they carry TORCHELASTIC_RUN_ID) with RANK=rank."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        except OSError:
            continue
        if b"TORCHELASTIC_RUN_ID" in env and env.get(b"RANK") == str(rank).encode():
            found.append(int(entry))
    return found


@pytest.mark.slow
def test_torchrun_rank_killed_mid_run_restarts_resumes_and_combines_exactly(tmp_path, tiny_model_dir):
    """torchrun --nproc-per-node 2 runs `probe capture --shard auto --resume`; rank 1 gets
    SIGKILL after it committed part of its shard; torchrun restarts the group, each rank
    resumes its own file, and the combined run equals an unsharded run (max diff 0)."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from probe import open_run

    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed")
    n = 1200
    texts = tmp_path / "in.txt"
    texts.write_text("\n".join(f"Sentence {i} says {'more ' * (i % 7)}about item {i}." for i in range(n)) + "\n")
    common = ["capture", str(texts), "--model", str(tiny_model_dir), "--keys", "pattern,z",
              "--batch-size", "4", "--window", "64", "--quiet"]
    probe_exe = shutil.which("probe")
    assert subprocess.run([probe_exe, *common, "--out", str(tmp_path / "whole.h5")]).returncode == 0
    shards = tmp_path / "shards"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts", "1",
         "--monitor-interval", "0.2", "--no-python", probe_exe, *common, "--shard", "auto",
         "--resume", "--out", str(shards) + "/"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        target, killed = shards / "shard-1-of-2.h5", None
        deadline = time.time() + 120
        while killed is None and time.time() < deadline and launcher.poll() is None:
            if target.exists() and target.stat().st_size > 200_000:  # some batches are on disk
                pids = _worker_pids(1)
                if pids:
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
                    killed = pids
            time.sleep(0.05)
        out, _ = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    log = out.decode(errors="replace")
    assert killed, "rank 1 finished before it could be killed: make the input longer\n" + log
    assert launcher.returncode == 0, log
    assert "restart" in log.lower() or "failed" in log.lower(), log   # torchrun saw the failure
    combined = tmp_path / "all.h5"
    assert subprocess.run([probe_exe, "combine", str(shards), "--out", str(combined)]).returncode == 0
    with open_run(tmp_path / "whole.h5") as a, open_run(combined) as b:
        assert len(a) == len(b) == n and b.complete
        for i in range(0, n, 7):
            assert a[i].text == b[i].text
            for key in a.keys:
                assert np.array_equal(a[i][key], b[i][key]), (i, key)
