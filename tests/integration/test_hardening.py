"""Hardening of run files and views against a second writer, crafted files, missing shards and
slips of the command line. Each test failed before the fix it guards."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import _tiny
from probe import AttentionProbe, open_run
from probe.captures import Example
from probe.errors import InputError, ProbeError
from probe.lock import RunLockedError
from probe.readers import records_from_texts
from probe.runner import capture_to_file
from probe.store import RunWriter, ShardError, UnsafeRunError, combine
from probe.view import build_view
from browser import _hover, _open, browser  # noqa: F401  (the browser fixture)

TEXTS = [f"Sentence {i} is {'not ' * (i % 2)}about {'many ' * (i % 3)}things." for i in range(12)]
PATTERN = "blocks.0.attn.pattern"


def _capture(path, texts=TEXTS, shard=None):
    with AttentionProbe(_tiny("bert"), _tokenizer(), keys=["pattern"], layers=[0]) as p:
        capture_to_file(p, lambda: records_from_texts(texts), path, batch_size=4, window=4,
                        shard=shard).close()
    return path


def _tokenizer():
    from conftest import _minilm

    return _minilm()[1]


def _empty_writer(path):
    return RunWriter.create(path, {"keys": [PATTERN], "stored_keys": [PATTERN]},
                            {PATTERN: [2, 0, 0]}, dtype="float32", compression=None)


def _python(code, *args, **kw):
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=120, **kw)


REOPEN = "import sys; from probe.store import RunWriter; RunWriter.reopen(sys.argv[1], dtype='float32').close()"
CREATE = ("import sys; from probe.store import RunWriter; RunWriter.create(sys.argv[1], {}, "
          "{'blocks.0.attn.pattern': [2, 0, 0]}, dtype='float32', compression=None).close()")


# ------------------------------------------------------------------ 1. one writer per run
def test_a_second_writer_process_is_refused_while_the_first_writes(tmp_path):
    run = tmp_path / "run.h5"
    writer = _empty_writer(run)
    try:
        for code in (REOPEN, CREATE):  # a resume, and a fresh capture racing for the same path
            done = _python(code, run)
            assert done.returncode != 0
            last = done.stderr.strip().splitlines()[-1]
            assert "RunLockedError" in last and f"is being written by pid {os.getpid()}" in last, last
            assert "wait for it" in last
        lock = json.loads((tmp_path / "run.h5.lock").read_text())
        assert lock["pid"] == os.getpid() and lock["host"] and lock["since"]
    finally:
        writer.close()
    assert not (tmp_path / "run.h5.lock").exists()  # a clean close removes it
    done = _python(REOPEN, run)
    assert done.returncode == 0, done.stderr


def test_capture_resume_is_refused_while_another_process_writes(tmp_path, tiny_model_dir):
    from probe.cli import main

    src, run = tmp_path / "in.txt", tmp_path / "run.h5"
    src.write_text("\n".join(TEXTS) + "\n")
    args = ["capture", str(src), "--out", str(run), "--model", str(tiny_model_dir), "--quiet"]
    assert main(args) == 0
    with h5py.File(run, "r+") as f:  # an unfinished run
        f["state/complete"][0] = 0
    writer = RunWriter.reopen(run, dtype="float32")  # the first writer, still writing
    try:
        done = subprocess.run([sys.executable, "-m", "probe.cli", *args, "--resume"],
                              capture_output=True, text=True, timeout=300)
    finally:
        writer.close()
    assert done.returncode == 2, done.stderr
    assert f"probe: error: {run} is being written by pid {os.getpid()}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_stale_lock_of_a_dead_writer_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run.h5"
    stale = {"pid": dead.pid, "host": "gone", "since": "2020-01-01T00:00:00+00:00"}
    (tmp_path / "run.h5.lock").write_text(json.dumps(stale))
    writer = _empty_writer(run)
    assert json.loads((tmp_path / "run.h5.lock").read_text())["pid"] == os.getpid()
    writer.close()
    assert not (tmp_path / "run.h5.lock").exists()
    (tmp_path / "run.h5.lock").write_text(json.dumps(stale))  # and for a resume
    writer = RunWriter.reopen(run, dtype="float32")
    assert json.loads((tmp_path / "run.h5.lock").read_text())["pid"] == os.getpid()
    writer.close()
    assert not (tmp_path / "run.h5.lock").exists()


def test_hdf5_file_lock_gives_the_same_clear_error(tmp_path):
    run = tmp_path / "run.h5"
    _empty_writer(run).close()
    # a writer outside probe (plain h5py, not SWMR) holds HDF5's own lock on the file
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time; f = h5py.File(sys.argv[1], 'r+'); "
                               "print('ready', flush=True); time.sleep(60)", str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(RunLockedError, match="is being written by another process"):
            RunWriter.reopen(run, dtype="float32")
        assert not (tmp_path / "run.h5.lock").exists()  # our lock was given back
        with pytest.raises(RunLockedError, match="wait for it"):
            open_run(run)
    finally:
        holder.kill()
        holder.wait()


def test_combine_holds_the_lock_of_its_output(tmp_path):
    for k in range(2):
        _capture(tmp_path / f"s{k}.h5", shard=f"{k}/2")
    writer = _empty_writer(tmp_path / "all.h5.creating")  # unrelated run: no interference
    writer.close()
    from probe.lock import WriterLock

    with WriterLock(tmp_path / "all.h5"):  # someone else is writing all.h5
        done = _python("import sys; from probe.store import combine; combine(sys.argv[1:3], sys.argv[3])",
                       tmp_path / "s0.h5", tmp_path / "s1.h5", tmp_path / "all.h5")
        assert done.returncode != 0 and "is being written by pid" in done.stderr
    combine([tmp_path / "s0.h5", tmp_path / "s1.h5"], tmp_path / "all.h5")
    assert not (tmp_path / "all.h5.lock").exists()
    with open_run(tmp_path / "all.h5") as run:
        assert run.complete and len(run) == len(TEXTS)


# ------------------------------------------------------------------ 2. script injection in the view
PAYLOADS = ["Marker", "__DATA__", "</script>", "<!--<script>", '"><img src=x onerror=alert(1)>',
            "<img src=x onerror=document.title='pwned'>", "&amp;", "__TITLE__", "\u2028"]


def _payload_examples():
    tokens = ["[CLS]", *PAYLOADS, "[SEP]"]
    n = len(tokens)
    rng = np.random.default_rng(0)
    pattern = rng.random((2, n, n))
    pattern /= pattern.sum(-1, keepdims=True)
    text = "Marker __DATA__ <img src=x onerror=alert(4)> </script> <!--<script> __TITLE__"
    ex = Example(tokens, [PATTERN], lambda k: pattern, text=text)
    other = Example(tokens[:3] + ["not"] + tokens[3:], [PATTERN],
                    lambda k: np.full((2, n + 1, n + 1), 1 / (n + 1)), text=text + " not",
                    meta={"target": "not"})
    return ex, other


def _data_block(page):
    blocks = re.findall(r'<script id="probe-data" type="application/json">(.*?)</script>', page, re.S)
    assert len(blocks) == 1
    return blocks[0], page.replace(blocks[0], "")


@pytest.mark.parametrize("pair", [False, True])
def test_view_keeps_hostile_text_as_data(pair):
    ex, other = _payload_examples()
    page = build_view(ex, other if pair else None)
    block, outside = _data_block(page)
    assert page.count("<script") == 2 and page.count("</script>") == 2  # data block and the script
    assert "<img" not in page and "<!--" not in page
    assert '"panels": [' not in outside and page.count('"panels": [') == 1  # data spliced once
    data = json.loads(block)
    assert data["panels"][0]["tokens"] == ex.tokens and data["title"] == ex.text
    if pair:
        assert data["panels"][1]["tokens"] == other.tokens
    for char in "<>&\u2028":
        assert char not in block
    heading = re.search(r'<h2 id="title">(.*?)</h2>', page, re.S).group(1)
    assert heading == ex.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_hostile_view_in_chromium_shows_text_and_runs_no_script(browser, tmp_path):
    ex, other = _payload_examples()
    _open(browser, tmp_path, build_view(ex, other))  # asserts the page's script ran (data-ready)
    assert browser.title == f"probe view: {ex.text}"
    assert browser.find_element("id", "title").text == ex.text
    shown = browser.execute_script(
        "return [...document.querySelectorAll('.panel[data-panel=original] .tokens.row .tok')]"
        ".map(s => s.textContent)")
    assert shown == ex.tokens
    assert not browser.find_elements("css selector", "img")
    status = _hover(browser, "original", 5)  # '"><img src=x onerror=alert(1)>' as plain text
    assert f"'{PAYLOADS[4]}' (#5)" in status


# ------------------------------------------------------------------ 3. links out of the run
SECRET = b"root:x:0:0:root:/root:/bin/bash\nsecret line of a private file\n"


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    return _capture(tmp_path_factory.mktemp("clean") / "run.h5")


@pytest.fixture
def outside(tmp_path_factory):
    """An HDF5 file in another folder holding a private file's bytes."""
    folder = tmp_path_factory.mktemp("elsewhere")
    (folder / "passwd").write_bytes(SECRET)
    with h5py.File(folder / "secret.h5", "w") as f:
        f["data"] = np.frombuffer(SECRET, np.uint8)
    return folder / "secret.h5"


def _crafted(clean_run, tmp_path, craft):
    run = tmp_path / "run.h5"
    shutil.copy(clean_run, run)
    with h5py.File(run, "r+") as f:
        craft(f)
    return run


def _vds(f, source, name="examples/text"):
    del f[name]
    layout = h5py.VirtualLayout(shape=(len(SECRET),), dtype=np.uint8)
    layout[:] = h5py.VirtualSource(str(source), "data", shape=(len(SECRET),))
    f.create_virtual_dataset(name, layout)


def _assert_refused(run, where, what, tmp_path):
    from probe.cli import main

    with pytest.raises(UnsafeRunError, match=what) as err:
        open_run(run)
    assert str(run) in str(err.value) and where in str(err.value)
    assert main(["view", str(run), "--out", str(tmp_path / "v.html")]) == 2
    assert not (tmp_path / "v.html").exists()


def test_external_link_is_refused(clean_run, outside, tmp_path):
    def craft(f):
        del f["examples/text"]
        f["examples/text"] = h5py.ExternalLink(str(outside), "/data")
    _assert_refused(_crafted(clean_run, tmp_path, craft), "/examples/text", "external link", tmp_path)


def test_dataset_in_an_external_raw_file_is_refused(clean_run, outside, tmp_path):
    def craft(f):
        del f["examples/text"]
        f.create_dataset("examples/text", shape=(len(SECRET),), dtype=np.uint8,
                         external=[(str(outside.parent / "passwd"), 0, len(SECRET))])
    _assert_refused(_crafted(clean_run, tmp_path, craft), "/examples/text", "external raw file",
                    tmp_path)


@pytest.mark.parametrize("how", ["absolute", "relative", "symlink"])
def test_virtual_dataset_reading_outside_the_folder_is_refused(clean_run, outside, tmp_path, how):
    if how == "symlink":  # a link beside the run that leads out of its folder
        os.symlink(outside, tmp_path / "secret.h5")
        source = "secret.h5"
    else:
        source = outside if how == "absolute" else os.path.relpath(outside, tmp_path)
    run = _crafted(clean_run, tmp_path, lambda f: _vds(f, source))
    _assert_refused(run, "/examples/text", "outside the run's folder", tmp_path)


def test_soft_links_inside_the_file_are_fine_dangling_ones_refused(clean_run, tmp_path):
    def craft(f):
        f["alias"] = h5py.SoftLink("/examples")
    with open_run(_crafted(clean_run, tmp_path, craft)) as run:
        assert len(run) == len(TEXTS)
    os.unlink(tmp_path / "run.h5")
    run = _crafted(clean_run, tmp_path, lambda f: f.__setitem__("gone", h5py.SoftLink("/nowhere")))
    _assert_refused(run, "/gone", "not in the file", tmp_path)


def test_combine_refuses_a_shard_with_a_link_out(outside, tmp_path):
    for k in range(2):
        _capture(tmp_path / f"s{k}.h5", shard=f"{k}/2")
    with h5py.File(tmp_path / "s1.h5", "r+") as f:
        del f["tokens/text"]
        f["tokens/text"] = h5py.ExternalLink(str(outside), "/data")
    with pytest.raises(UnsafeRunError, match="external link"):
        combine([tmp_path / "s0.h5", tmp_path / "s1.h5"], tmp_path / "all.h5")
    assert not (tmp_path / "all.h5").exists()


# ------------------------------------------------------------------ 4. missing or replaced shards
@pytest.fixture
def combined(tmp_path):
    for k in range(2):
        _capture(tmp_path / f"s{k}.h5", shard=f"{k}/2")
    combine([tmp_path / "s0.h5", tmp_path / "s1.h5"], tmp_path / "all.h5")
    return tmp_path / "all.h5"


def test_missing_shard_is_named(combined, tmp_path):
    os.rename(tmp_path / "s1.h5", tmp_path / "moved.h5")
    with pytest.raises(ShardError, match=r"shard s1\.h5, which is missing .*keep the shard files beside"):
        open_run(combined)
    # HDF5 would look for it in the working directory too: a file there must not stand in
    os.chdir(tmp_path.parent)
    try:
        shutil.copy(tmp_path / "moved.h5", tmp_path.parent / "s1.h5")
        with pytest.raises(ShardError, match="missing"):
            open_run(combined)
    finally:
        os.unlink(tmp_path.parent / "s1.h5")


def test_replaced_shard_is_refused(combined, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    _capture(other / "s1.h5", texts=[t.upper() for t in TEXTS], shard="1/2")
    shutil.copy(other / "s1.h5", tmp_path / "s1.h5")
    with pytest.raises(ShardError, match=r"shard s1\.h5 is not the file this run was combined from"):
        open_run(combined)


def test_shards_without_run_id_are_checked_by_index(tmp_path):
    for k in range(2):
        _capture(tmp_path / f"s{k}.h5", shard=f"{k}/2")
        with h5py.File(tmp_path / f"s{k}.h5", "r+") as f:  # as written before run ids
            if "run_id" in f.attrs:
                del f.attrs["run_id"]
    combine([tmp_path / "s0.h5", tmp_path / "s1.h5"], tmp_path / "all.h5")
    with open_run(tmp_path / "all.h5") as run:
        assert run.complete and not np.isnan(run[0][PATTERN]).any()
    with h5py.File(tmp_path / "s1.h5", "r+") as f:
        f["index/n_tokens"][0] += 1
    with pytest.raises(ShardError, match="not the file this run was combined from"):
        open_run(tmp_path / "all.h5")


def test_combine_refuses_shards_outside_the_output_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for k in range(2):
        _capture(tmp_path / "a" / f"s{k}.h5", shard=f"{k}/2")
    with pytest.raises(InputError, match="must lie in its folder"):
        combine([tmp_path / "a" / "s0.h5", tmp_path / "a" / "s1.h5"], tmp_path / "b" / "all.h5")
    combine([tmp_path / "a" / "s0.h5", tmp_path / "a" / "s1.h5"], tmp_path / "all.h5")  # subfolder: fine
    with open_run(tmp_path / "all.h5") as run:
        assert run.complete and len(run) == len(TEXTS)


# ------------------------------------------------------------------ 5. probe view --out
def test_view_never_overwrites_the_run_or_another_hdf5_file(clean_run, tmp_path, capsys):
    from probe.cli import main

    run = tmp_path / "run.h5"
    shutil.copy(clean_run, run)
    other = tmp_path / "other.h5"
    shutil.copy(clean_run, other)
    before = run.read_bytes()
    os.symlink(run, tmp_path / "alias.html")
    for out in (run, tmp_path / ".." / tmp_path.name / "run.h5", other, tmp_path / "alias.html", tmp_path):
        assert main(["view", str(run), "--out", str(out)]) == 2, out
        assert "give it its own name" in capsys.readouterr().err
    assert run.read_bytes() == before
    with open_run(run) as r, open_run(other) as o:
        assert len(r) == len(o) == len(TEXTS)
    assert main(["view", str(run), "--out", str(tmp_path / "v.html")]) == 0
    assert (tmp_path / "v.html").read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.html", "other.h5", "run.h5", "v.html"]
