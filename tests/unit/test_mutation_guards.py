"""More behaviours that survived mutation testing (issue 14): each test here fails when the
behaviour it names is broken, and the table in the test names says which mutation it catches.

- a slice or an item of a narrowed Capture keeps the narrowing, and slices keep the head map;
- publishing on a file system without hard links still never overwrites a run;
- the pair study: a pair without a control is left out of the contrast with the control (not
  compared with zero), and the explicit baseline is an unpaired test over both sets' clusters,
  pairs minus baseline, without the cue metrics.
"""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from probe import InputError, ProbeError
from probe.captures import Capture, CapturedBatch, Example
from probe.design import Exclusion, PairPlan, Why
from probe.pairs import Pair
from probe.study import PairTable, pair_tables, study_statistics


def _capture(head_map=None) -> Capture:
    rng = np.random.default_rng(0)
    arrays = {"blocks.0.attn.pattern": rng.random((3, 2, 4, 4)),
              "blocks.0.attn.z": rng.random((3, 2, 4, 5)),
              "blocks.1.attn.pattern": rng.random((3, 2, 4, 4))}
    batch = CapturedBatch(arrays, [(0, 4), (0, 3), (0, 2)], [list("abcd"), list("abc"), list("ab")],
                          head_map=head_map)
    return Capture([batch.example(i) for i in range(3)], batch.keys, batch=batch)


def test_a_narrowed_capture_stays_narrowed_when_sliced_or_indexed():
    only = _capture().select(layers=[0], components=["pattern"])
    assert only.keys == ("blocks.0.attn.pattern",)
    part = only[1:]
    assert part.keys == only.keys and len(part) == 2
    assert list(part[0]) == ["blocks.0.attn.pattern"]
    assert list(only[0]) == ["blocks.0.attn.pattern"]
    assert "blocks.0.attn.z" not in only[2]
    with pytest.raises(KeyError):
        only[0]["blocks.1.attn.pattern"]


def test_slices_keep_the_head_map_even_when_empty():
    cap = _capture(head_map={0: ((1, 3), (0, 1)), 1: ((1, 3), (0, 1))})
    assert cap.heads == {0: [1, 3], 1: [1, 3]}
    assert cap[1:].heads == cap.heads and cap[::2].kv_heads == cap.kv_heads
    assert len(cap[3:]) == 0 and cap[3:].heads == cap.heads  # no example to ask


def _publish_outcome(folder, exists: bool):
    """(error, bytes at the final name, whether the temporary file is left) of one publish."""
    from probe.store.files import publish

    final, tmp = folder / "run.h5", folder / "run.h5.creating"
    folder.mkdir()
    if exists:
        final.write_bytes(b"precious")
    tmp.write_bytes(b"new")
    try:
        publish(str(tmp), str(final))
        error = None
    except InputError as err:
        error = str(err).replace(str(folder), "FOLDER")
    return error, final.read_bytes(), tmp.exists()


@pytest.mark.parametrize("refusal", [PermissionError(errno.EPERM, "Operation not permitted"),
                                     OSError(errno.EXDEV, "Invalid cross-device link")])
def test_publishing_without_hard_links_is_as_safe_as_with_them(tmp_path, monkeypatch, refusal):
    linked = {exists: _publish_outcome(tmp_path / f"linked-{exists}", exists)
              for exists in (True, False)}
    assert linked[True] == ("FOLDER/run.h5 already exists; probe never overwrites a run",
                            b"precious", False)
    assert linked[False] == (None, b"new", False)

    def no_links(src, dst):
        raise refusal

    monkeypatch.setattr(os, "link", no_links)  # a file system without hard links
    for exists in (True, False):
        assert _publish_outcome(tmp_path / f"renamed-{exists}", exists) == linked[exists]


# --------------------------------------------------------------------------- the pair study
ORIG = ["[CLS]", "it", "rains", "[SEP]"]
CF = ["[CLS]", "it", "not", "rains", "[SEP]"]
CTRL = ["[CLS]", "it", "really", "rains", "[SEP]"]
P_ORIG = np.array([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.5, 0, 0.5, 0], [0.25] * 4])
P_CF = np.array([[1.0, 0, 0, 0, 0], [0.5, 0, 0.5, 0, 0], [0.2] * 5, [0.5, 0, 0.5, 0, 0], [0.2] * 5])
P_CTRL = np.array([[1.0, 0, 0, 0, 0], [0.5, 0.25, 0.25, 0, 0], [0.2] * 5, [0.5, 0, 0.25, 0.25, 0],
                   [0.2] * 5])


class _PairRun:
    """A pair capture in memory: pair a with a control, pair b without one."""

    layers = (0,)
    head_map: dict = {}

    def __init__(self):
        self.examples = []
        for pid, sides in (("a", ("original", "counterfactual", "control")),
                           ("b", ("original", "counterfactual"))):
            for side in sides:
                tokens, pattern = {"original": (ORIG, P_ORIG), "counterfactual": (CF, P_CF),
                                   "control": (CTRL, P_CTRL)}[side]
                text = " ".join(tokens[1:-1])
                self.examples.append(Example(
                    tokens, ["blocks.0.attn.pattern"], lambda k, p=pattern: p[None], text=text,
                    meta={"pair_id": pid, "side": side, "study": "negation", "cluster": pid}))

    def metas(self):
        return [e.meta for e in self.examples]

    def __getitem__(self, i):
        return self.examples[i]


def test_a_pair_without_a_control_has_no_control_values():
    table = pair_tables(_PairRun(), metrics=["mean_attention_diff", "first_token_shift"])["pairs"]
    assert table.ids == ["a", "b"] and table.used.all()
    for metric in ("mean_attention_diff", "first_token_shift"):
        assert np.isfinite(table.values[metric]).all(), metric
        assert np.isfinite(table.control[metric][0]).all(), metric
        assert np.isnan(table.control[metric][1]).all(), metric  # not zero: no control at all


def _table(set_name, values: dict, control: dict, exclusions=None) -> PairTable:
    n = len(next(iter(values.values())))
    plans = [PairPlan(Pair(f"{set_name}{i}", "x", "y", kind="k"), set_name, f"{set_name}{i}", None)
             for i in range(n)]
    as_cells = lambda v: np.asarray(v, float).reshape(n, 1, 1)  # noqa: E731  [pair, layer, head]
    return PairTable(set_name, "negation", plans, (0,), exclusions or [None] * n,
                     values={m: as_cells(v) for m, v in values.items()},
                     control={m: as_cells(v) for m, v in control.items()})


def _row(rows, metric, contrast):
    found = [r for r in rows if r["metric"] == metric and r["contrast"] == contrast]
    assert len(found) == 1, (metric, contrast, found)
    return found[0]


def test_study_contrasts_with_partial_controls_and_an_unpaired_baseline():
    nan = np.nan
    main = _table("pairs", {"first_token_shift": [1, 2, 3, 4, 5, 6], "cue_attention_in": [1] * 6},
                  {"first_token_shift": [0.5, 0.5, 0.5, 0.5, nan, nan], "cue_attention_in": [0.5] * 6})
    base = _table("baseline", {"first_token_shift": [0.1, 0.2, 0.3, 0.4, nan],
                               "cue_attention_in": [0.1] * 4 + [nan]},
                  {"first_token_shift": [nan] * 5, "cue_attention_in": [nan] * 5},
                  exclusions=[None] * 4 + [Exclusion(Why.DUPLICATE, "baseline0")])
    rows = study_statistics(main, base, n_resamples=50)

    orig = _row(rows, "first_token_shift", "negation_vs_original")
    assert (orig["n_pairs"], orig["estimate"]) == (6, pytest.approx(3.5))
    # the two pairs without a control are left out of the contrast with the control
    ctrl = _row(rows, "first_token_shift", "negation_vs_control")
    assert (ctrl["n_pairs"], ctrl["n_clusters"], ctrl["estimate"]) == (4, 4, pytest.approx(2.0))
    # the baseline: unpaired, pairs minus baseline, clusters of both sets
    vs_base = _row(rows, "first_token_shift", "negation_vs_baseline")
    assert vs_base["estimate"] == pytest.approx(3.5 - 0.25)
    assert (vs_base["n_pairs"], vs_base["n_clusters"]) == (10, 10)
    assert vs_base["test"].startswith("label permutation over clusters") and vs_base["p"] < 0.05
    assert not [r for r in rows if r["metric"] == "cue_attention_in"
                and r["contrast"] == "negation_vs_baseline"]
    # without a baseline there is no such contrast
    assert {r["contrast"] for r in study_statistics(main, n_resamples=50)} == {
        "negation_vs_original", "negation_vs_control"}


def test_a_resumed_batch_may_hold_only_its_first_rows():
    """After a salvaged resume the last committed batch may hold its first rows; those are
    skipped when the batch is written again. Done rows anywhere else mean another plan."""
    from probe.runner import _committed_head

    assert _committed_head(np.array([False, False, False]), "run.h5") == 0
    assert _committed_head(np.array([True, True, False]), "run.h5") == 2
    for mixed in ([False, True, False], [True, False, True]):
        with pytest.raises(ProbeError, match="holds part of a batch"):
            _committed_head(np.array(mixed), "run.h5")
