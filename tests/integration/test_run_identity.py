"""The run's identity (probe.store.layout.IDENTITY) guards resume and combine, setting by
setting: mutation testing (issue 14) found that dropping ``window`` from it, combining an
unfinished shard, or combining shards that overlap passed every other test."""

from __future__ import annotations

import shutil

import h5py
import pytest

from conftest import _tiny
from probe import AttentionProbe, InputError, open_run
from probe.readers import records_from_texts
from probe.runner import capture_to_file
from probe.store import combine

TEXTS = [f"Sentence {i} is {'not ' * (i % 2)}short." for i in range(12)]
SETTINGS = {"batch_size": 4, "window": 8}


def _run(probe, path, **options):
    return capture_to_file(probe, lambda: records_from_texts(TEXTS), path, **{**SETTINGS, **options})


@pytest.fixture(scope="module")
def parts(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("identity")
    with AttentionProbe(_tiny("bert"), tokenizer, keys=["pattern"]) as p:
        _run(p, root / "whole.h5").close()
        for k in range(2):
            _run(p, root / f"part{k}.h5", shard=f"{k}/2").close()
    return root


@pytest.mark.parametrize("changed", [{"window": 4}, {"batch_size": 3}, {"truncate": True},
                                     {"compression": "gzip"}, {"shard": "0/2"}])
def test_resume_with_another_setting_is_refused_naming_it(parts, tokenizer, changed):
    (name, value), = changed.items()
    with AttentionProbe(_tiny("bert"), tokenizer, keys=["pattern"]) as p:
        with pytest.raises(InputError, match=rf"cannot resume .*settings differ \({name}: "):
            _run(p, parts / "whole.h5", resume=True, **changed)
        _run(p, parts / "whole.h5", resume=True).close()  # the same settings: accepted


def test_combine_refuses_an_unfinished_shard_unless_allowed(parts, tmp_path):
    unfinished = tmp_path / "part1.h5"
    shutil.copy(parts / "part1.h5", unfinished)
    shutil.copy(parts / "part0.h5", tmp_path / "part0.h5")
    with h5py.File(unfinished, "r+") as f:  # as if its writer had stopped before the end
        f["state/complete"][0] = 0
    with pytest.raises(InputError, match=r"not complete: unfinished shards \[.*part1\.h5'\], "
                                         r"missing shards none"):
        combine([tmp_path / "part0.h5", unfinished], tmp_path / "c.h5")
    assert not (tmp_path / "c.h5").exists()
    combine([tmp_path / "part0.h5", unfinished], tmp_path / "c.h5", allow_incomplete=True)
    with open_run(tmp_path / "c.h5") as run:
        assert not run.complete and len(run) == len(TEXTS)


def test_combine_refuses_shards_that_overlap(parts, tmp_path):
    shutil.copy(parts / "part0.h5", tmp_path / "part0.h5")
    twin = tmp_path / "twin.h5"
    shutil.copy(parts / "part0.h5", twin)
    with h5py.File(twin, "r+") as f:  # shard 0's rows under the name of shard 1
        f.attrs["shard"] = "1/2"
    with pytest.raises(InputError, match="shards overlap"):
        combine([tmp_path / "part0.h5", twin], tmp_path / "c.h5")
    assert not (tmp_path / "c.h5").exists()
