"""Shards of one run written separately and combined equal the unsharded run; a combined copy
equals the combined view."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from conftest import _tiny
from probe import AttentionProbe, InputError, open_run
from probe.readers import records_from_texts
from probe.runner import capture_to_file
from probe.store import REQUIRED, combine, shards
from probe.verify import verify_run

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
    with pytest.raises(InputError, match="differs in keys"):
        combine([tmp_path / "part0.h5", tmp_path / "other.h5"], tmp_path / "c5.h5", copy=True)
    assert not (tmp_path / "c5.h5").exists()
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
    (tmp_path / "elsewhere").mkdir()
    copy = tmp_path / "elsewhere" / "all.h5"
    assert main(["combine", str(tmp_path / "s0.h5"), str(tmp_path / "s1.h5"), "--out", str(copy),
                 "--copy"]) == 0
    assert "2 shards, complete; a self-contained copy" in capsys.readouterr().out
    _assert_same_datasets(tmp_path / "all.h5", copy)
    assert main(["capture", str(src), "--out", str(tmp_path / "x.h5"), "--shard", "2/2"]) == 2
    assert "K must be in 0..N-1" in capsys.readouterr().err


def _datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    found = {}

    def visit(name, obj):  # returns None: a value would stop the visit
        if isinstance(obj, h5py.Dataset):
            found[name] = obj

    f.visititems(visit)
    return found


def _assert_same_datasets(view_path, copy_path) -> None:
    """The copy holds every dataset of the view, element for element (max diff 0), as
    datasets of its own with checksums, and the view's attributes less the shard references."""
    with h5py.File(view_path, "r") as view, h5py.File(copy_path, "r") as copy:
        a, b = _datasets(view), _datasets(copy)
        assert sorted(a) == sorted(b) and len(a) > len(REQUIRED)  # every dataset, tensors too
        assert any(ds.is_virtual for ds in a.values())
        for name, ds in b.items():
            assert not ds.is_virtual and ds.dtype == a[name].dtype, name
            assert ds.fletcher32 or name.startswith("state/"), name
            assert dict(ds.attrs).keys() == dict(a[name].attrs).keys(), name
            for attr, value in a[name].attrs.items():
                assert np.array_equal(ds.attrs[attr], value), (name, attr)
            np.testing.assert_array_equal(ds[()], a[name][()], err_msg=name)
        assert "shards" not in copy.attrs and "shard_ids" not in copy.attrs
        assert set(view.attrs) - set(copy.attrs) == {"shards", "shard_ids"}
        for attr in set(copy.attrs) - {"run_id", "created"}:
            assert np.array_equal(copy.attrs[attr], view.attrs[attr]), attr


@pytest.mark.parametrize("dtype,compression", [("float32", "none"), ("bfloat16", "lzf")])
def test_combined_copy_equals_the_view(tokenizer, tmp_path, dtype, compression):
    parts = tmp_path / "parts"
    with AttentionProbe(_tiny("llama"), tokenizer) as p:
        whole = capture_to_file(p, lambda: records_from_texts(TEXTS), tmp_path / "whole.h5",
                                batch_size=4, window=8, dtype=dtype, compression=compression)
        whole.close()
        for k in range(3):
            capture_to_file(p, lambda: records_from_texts(TEXTS), parts / f"s{k}.h5", batch_size=4,
                            window=8, dtype=dtype, compression=compression, shard=f"{k}/3").close()
    files = [parts / f"s{k}.h5" for k in range(3)]
    combine(files, parts / "view.h5")
    combine(files, tmp_path / "copy.h5", copy=True)  # outside the shards' folder: allowed
    _assert_same_datasets(parts / "view.h5", tmp_path / "copy.h5")
    with h5py.File(tmp_path / "whole.h5", "r") as a, h5py.File(tmp_path / "copy.h5", "r") as b:
        for name, ds in _datasets(a).items():  # chunked and compressed like a run in one piece
            assert (b[name].chunks, b[name].compression) == (ds.chunks, ds.compression), name
    os.rename(parts, tmp_path / "moved")  # self-contained: the shards are not needed
    with open_run(tmp_path / "copy.h5") as run:
        assert len(run) == len(TEXTS) and run.complete and run.attrs["shard"] == "combined"
        assert run[3].text == TEXTS[3]
    report = verify_run(tmp_path / "copy.h5")
    assert report.ok and report.checksummed == report.datasets and not report.shards
    from probe.cli import main

    assert main(["verify", str(tmp_path / "copy.h5")]) == 0


def test_combined_copy_in_small_blocks(tokenizer, tmp_path, monkeypatch):
    with AttentionProbe(_tiny("bert"), tokenizer, keys=["pattern", "q"]) as p:
        for k in range(2):
            _run(p, tmp_path / f"s{k}.h5", shard=f"{k}/2").close()
    files = [tmp_path / "s0.h5", tmp_path / "s1.h5"]
    combine(files, tmp_path / "view.h5")
    appended = []
    real_extend = shards.extend
    monkeypatch.setattr(shards, "COPY_BLOCK", 7)  # not a divisor of any chunk or stream
    monkeypatch.setattr(shards, "extend", lambda ds, data: (appended.append(len(data)),
                                                             real_extend(ds, data)))
    combine(files, tmp_path / "copy.h5", copy=True)
    assert max(appended) == 7 and len(appended) > 1000  # every write is one block at most
    _assert_same_datasets(tmp_path / "view.h5", tmp_path / "copy.h5")
