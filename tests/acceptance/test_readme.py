"""Every Python block of README.md runs as written, in a fresh folder, in order (later blocks
use the names earlier ones define, as a reader pasting them into one notebook would). The
offline-reading recipe reads a run file: the test writes one there first, as the README's
capture section does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)


def test_readme_python_blocks_run_in_a_fresh_folder(tmp_path, monkeypatch):
    from probe import AttentionProbe, bundled_path, load_model

    blocks = python_blocks()
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    model, tokenizer = load_model()
    with AttentionProbe(model, tokenizer) as p:  # the run the h5py recipe reads
        p.run_to_file(bundled_path("sentences.txt").read_text().splitlines(), "run.h5").close()
    namespace = {"__name__": "__readme__"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)
        except Exception as err:  # pragma: no cover - the message is the point
            raise AssertionError(f"README python block {i} failed: {err!r}\n{block}") from err
    from probe import open_run

    with open_run("run.h5") as run:  # the h5py-only recipe read example 7 exactly
        assert namespace["text"] == run[7].text and namespace["tokens"] == run[7].tokens
        assert (namespace["pattern"] == run[7]["blocks.3.attn.pattern"]).all()


def test_wheel_ships_the_bundled_data(tmp_path):
    out = tmp_path / "wheel"
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "-q", "-w", str(out), str(ROOT)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PIP_NO_INPUT": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    names = zipfile.ZipFile(next(out.glob("*.whl"))).namelist()
    assert {"probe/data/negation_pairs.jsonl", "probe/data/sentences.txt"} <= set(names)
