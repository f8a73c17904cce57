"""The Ray recipe, experiments/ray_capture.py: its per-shard function without Ray (text and
pair inputs, resumed, combined equal to an unsharded run), and the script itself under Ray
when Ray is installed (an optional extra)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from probe import AttentionProbe, load_model, open_run
from probe.store import combine

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "ray_capture.py"
PAIRS = Path(__file__).resolve().parents[1] / "data" / "cue_pairs.jsonl"
TEXTS = [f"Sentence number {i} is {'not ' * (i % 2)}here{'.' * (i % 3 + 1)}" for i in range(9)]


def _recipe():
    spec = importlib.util.spec_from_file_location("ray_capture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_same_runs(path_a, path_b) -> None:
    with open_run(path_a) as a, open_run(path_b) as b:
        assert len(a) == len(b) and a.complete and b.complete
        assert a.metas() == b.metas()
        for i in range(len(a)):
            assert (a[i].text, a[i].tokens) == (b[i].text, b[i].tokens)
            for key in a.keys:
                np.testing.assert_array_equal(a[i][key], b[i][key], err_msg=f"{i} {key}")


def test_capture_shard_without_ray(tmp_path, tiny_model_dir, monkeypatch):
    from probe.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails: the function needs none
    recipe = _recipe()
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n")
    options = {"model": str(tiny_model_dir), "keys": ["pattern", "z"], "window": 2}
    done = [recipe.capture_shard(src, tmp_path / "shards", k, 2, **options) for k in range(2)]
    assert [Path(d["path"]).name for d in done] == ["shard-0-of-2.h5", "shard-1-of-2.h5"]
    assert all(d["complete"] for d in done) and sum(d["examples"] for d in done) == len(TEXTS)
    again = recipe.capture_shard(src, tmp_path / "shards", 1, 2, **options)  # resumes, done
    assert again["examples"] == done[1]["examples"] and again["complete"]
    combine([d["path"] for d in done], tmp_path / "shards" / "run.h5")
    assert main(["capture", str(src), "--out", str(tmp_path / "whole.h5"), "--model",
                 str(tiny_model_dir), "--keys", "pattern,z", "--window", "2", "--quiet"]) == 0
    _assert_same_runs(tmp_path / "whole.h5", tmp_path / "shards" / "run.h5")


def test_capture_shard_of_a_pair_file(tmp_path, tiny_model_dir, monkeypatch):
    from probe.design import plan_pairs
    from probe.pairs import load_pairs
    from probe.study import STUDY_COMPONENTS, capture_pairs

    monkeypatch.setitem(sys.modules, "ray", None)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(PAIRS.read_text().splitlines(keepends=True)[:5]))
    recipe = _recipe()
    done = [recipe.capture_shard(pairs, tmp_path / "shards", k, 2, pairs=True,
                                 model=str(tiny_model_dir), window=4) for k in range(2)]
    assert min(d["examples"] for d in done) > 0
    combine([d["path"] for d in done], tmp_path / "shards" / "run.h5")
    with AttentionProbe(*load_model(str(tiny_model_dir)), keys=STUDY_COMPONENTS) as p:
        capture_pairs(p, plan_pairs(load_pairs(pairs)), tmp_path / "whole.h5", window=4).close()
    _assert_same_runs(tmp_path / "whole.h5", tmp_path / "shards" / "run.h5")


def test_the_script_under_ray(tmp_path, tiny_model_dir):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install -e '.[ray]'); the "
                                      "recipe's per-shard function is tested without it above")
    from probe.cli import main

    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "shards"
    done = subprocess.run([sys.executable, str(SCRIPT), str(src), "--tasks", "2", "--out", f"{out}/",
                           "--model", str(tiny_model_dir), "--keys", "pattern,z", "--window", "2",
                           "--copy", "--combined", str(tmp_path / "all.h5")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"all.h5: {len(TEXTS)} examples from 2 tasks (self-contained copy)" in done.stdout
    assert sorted(p.name for p in out.glob("*.h5")) == ["shard-0-of-2.h5", "shard-1-of-2.h5"]
    # Ray gives each task OMP_NUM_THREADS=1 (its num_cpus); torch's sums in another thread
    # count round differently (1e-8 here), so the reference runs with one thread too
    whole = subprocess.run([sys.executable, "-m", "probe.cli", "capture", str(src), "--out",
                            str(tmp_path / "whole.h5"), "--model", str(tiny_model_dir), "--keys",
                            "pattern,z", "--window", "2", "--quiet"], capture_output=True,
                           text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert whole.returncode == 0, whole.stderr
    _assert_same_runs(tmp_path / "whole.h5", tmp_path / "all.h5")
    assert main(["verify", str(tmp_path / "all.h5")]) == 0
