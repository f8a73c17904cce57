"""Shards of one run written separately and combined equal the unsharded run."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import _tiny
from probe import AttentionProbe, InputError, open_run
from probe.readers import records_from_texts
from probe.runner import capture_to_file
from probe.store import combine

TEXTS = [f"Sentence number {i} is {'not ' * (i % 2)}about {'many ' * (i % 5)}things." for i in range(57)]


def _run(probe, path, shard=None):
    return capture_to_file(probe, lambda: records_from_texts(TEXTS), path, batch_size=4, window=8,
                           shard=shard)


def test_combined_shards_equal_the_unsharded_run(tokenizer, tmp_path):
    with AttentionProbe(_tiny("llama"), tokenizer) as p:
        _run(p, tmp_path / "whole.h5").close()
        for k in range(3):
            with _run(p, tmp_path / f"part{k}.h5", shard=f"{k}/3") as part:
                assert len(part) < len(TEXTS) and part.complete
    combine([tmp_path / f"part{k}.h5" for k in (2, 0, 1)], tmp_path / "combined.h5")
    with open_run(tmp_path / "whole.h5") as whole, open_run(tmp_path / "combined.h5") as combined:
        assert len(combined) == len(whole) == len(TEXTS) and combined.complete
        assert combined.attrs["shard"] == "combined" and len(combined.attrs["shards"]) == 3
        for a, b in zip(whole, combined):
            assert (a.index, a.tokens, a.text) == (b.index, b.tokens, b.text)
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_combine_refuses_bad_sets(tokenizer, tmp_path):
    with AttentionProbe(_tiny("bert"), tokenizer, keys=["pattern"]) as p:
        for k in range(2):
            _run(p, tmp_path / f"part{k}.h5", shard=f"{k}/2").close()
    with AttentionProbe(_tiny("bert"), tokenizer, keys=["q"]) as p:
        _run(p, tmp_path / "other.h5", shard="1/2").close()
    with pytest.raises(InputError, match="missing shards \\['1'\\]"):
        combine([tmp_path / "part0.h5"], tmp_path / "c1.h5")
    combine([tmp_path / "part0.h5"], tmp_path / "c2.h5", allow_incomplete=True)
    with open_run(tmp_path / "c2.h5") as run:
        assert not run.complete and 0 < len(run) < len(TEXTS)
    with pytest.raises(InputError, match="distinct parts"):
        combine([tmp_path / "part0.h5", tmp_path / "part0.h5"], tmp_path / "c3.h5")
    with pytest.raises(InputError, match="differs in keys"):
        combine([tmp_path / "part0.h5", tmp_path / "other.h5"], tmp_path / "c4.h5")
    with pytest.raises(InputError, match="already exists"):
        combine([tmp_path / "part0.h5", tmp_path / "part1.h5"], tmp_path / "c2.h5")


def test_cli_shard_and_combine(tmp_path, tiny_model_dir, capsys):
    from probe.cli import main

    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n")
    for k in range(2):
        assert main(["capture", str(src), "--out", str(tmp_path / f"s{k}.h5"), "--model",
                     str(tiny_model_dir), "--shard", f"{k}/2", "--window", "8", "--quiet"]) == 0
    assert main(["combine", str(tmp_path / "s0.h5"), str(tmp_path / "s1.h5"), "--out",
                 str(tmp_path / "all.h5")]) == 0
    assert f"{len(TEXTS)} examples from 2 shards, complete" in capsys.readouterr().out
    assert main(["capture", str(src), "--out", str(tmp_path / "x.h5"), "--shard", "2/2"]) == 2
    assert "K must be in 0..N-1" in capsys.readouterr().err
