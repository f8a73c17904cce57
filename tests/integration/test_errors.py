"""Every bad input named in the issues gets one clear `probe: error:` line (the API raises
ProbeError with the same text), never a raw traceback, and writes nothing half-done."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from probe import AttentionProbe, InputError, ProbeError
from probe.models import check_device

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def probe_run(minilm):
    model, tokenizer = minilm

    def run(**options):
        keys = options.pop("keys", ["pattern"])
        with AttentionProbe(model, tokenizer, keys=keys) as p:
            if "out" in options:
                return p.run_to_file(["A b.", "C d."], options.pop("out"), **options)
            return p.run(["A b.", "C d."], **options)
    return run


@pytest.mark.parametrize("options,message", [
    ({"meta": [{}]}, "meta has 1 entries for 2 texts"),
    ({"ids": ["a"]}, "ids has 1 entries for 2 texts"),
    ({"meta": [1, 2]}, r"meta\[0\] is int, not a dict"),
    ({"batch_size": 1.5}, "batch_size must be a whole number of at least 1, got 1.5"),
    ({"batch_size": 0}, "batch_size must be a whole number"),
    ({"keys": [None]}, "keys must be component names or full keys"),
])
def test_api_errors(probe_run, options, message):
    with pytest.raises(InputError, match=message):
        probe_run(**options)


def test_output_folders_are_created_or_refused_clearly(probe_run, tmp_path):
    run = probe_run(out=tmp_path / "new" / "deeper" / "run.h5")
    assert len(run) == 2
    run.close()
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not (sys.platform.startswith("linux") and __import__("os").geteuid() == 0):
            with pytest.raises(InputError, match="not writable"):
                probe_run(out=locked / "run.h5")
    finally:
        locked.chmod(0o700)
    with pytest.raises(InputError, match="cannot create the folder"):
        probe_run(out="/proc/no-such/run.h5")


def test_device_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputError, match="CUDA is not available here"):
        check_device("cuda")
    with pytest.raises(InputError, match="is not a torch device"):
        check_device("warp-drive")


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "probe", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_cli_errors_are_one_line(tmp_path, tiny_model_dir):
    bad_type = tmp_path / "bad-type"
    bad_shape = tmp_path / "bad-shape"
    for folder, change in ((bad_type, {"model_type": "nonsense"}),
                           (bad_shape, {"hidden_size": 64, "num_attention_heads": 4})):
        folder.mkdir()
        for f in tiny_model_dir.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        config = json.loads((folder / "config.json").read_text())
        config.update(change)
        (folder / "config.json").write_text(json.dumps(config))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases = [
        (["capture", "--model", str(tiny_model_dir), "--layers", "a"], "'a' is not a layer index"),
        (["capture", "--model", str(tiny_model_dir), "--layers", "1,"], "'' is not a layer index"),
        (["capture", "--device", "cuda"], "CUDA is not available"),
        (["capture", "--model", str(bad_type)], "model type `nonsense`"),
        (["capture", "--model", str(bad_shape)], "shapes do not match its config"),
        (["capture", "--model", str(tmp_path / "no-model")], f"model folder {tmp_path / 'no-model'} does not exist"),
        (["capture", "--model", "./no-model"], "model folder ./no-model does not exist"),
        (["capture", "--model", str(tiny_model_dir), "--out", "/proc/no-such/run.h5"], "cannot create the folder"),
        (["negation", "--pairs", str(empty), "--out", str(tmp_path / "s")], "holds no pairs"),
        (["cues", "--pairs", str(tmp_path / "missing.jsonl")], "does not exist"),
    ]
    for args, message in cases:
        result = _cli(*args, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (args, result.stderr[-500:])
        assert "Traceback" not in result.stderr and lines[-1].startswith("probe: error: "), args
        assert message in lines[-1], (args, lines[-1])
    assert not (tmp_path / "s").exists()  # nothing half-written for a refused study
    version = _cli("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("probe ")


def test_metrics_derive_value_weighted_from_value_norm(minilm, tmp_path):
    import csv

    from probe.report import write_report

    model, tokenizer = minilm
    with AttentionProbe(model, tokenizer, keys=["pattern", "value_norm"]) as p:
        caps = p.run(["A robin is a bird."])
    with AttentionProbe(model, tokenizer, keys=["pattern", "value_weighted"]) as p:
        full = p.run(["A robin is a bird."])
    write_report(caps, tmp_path / "a")
    write_report(full, tmp_path / "b")
    a = list(csv.DictReader(open(tmp_path / "a" / "token_importance.csv")))
    b = list(csv.DictReader(open(tmp_path / "b" / "token_importance.csv")))
    assert all(r["value_weighted"] != "" for r in a)
    assert [r["value_weighted"] for r in a] == [r["value_weighted"] for r in b]
    assert isinstance(InputError("x"), ProbeError)
