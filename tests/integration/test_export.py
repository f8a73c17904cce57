"""probe export: a run's metric tables at full precision, an output folder's CSVs typed."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from probe import InputError
from probe import metrics as M
from probe.cli import main
from probe.outputs import write_csv

pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def run_file(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("export")
    texts = folder / "in.jsonl"
    texts.write_text("\n".join(f'{{"text": "Item {i} is {"very " * i}small.", "kind": "=k{i % 2}"}}'
                               for i in range(5)) + "\n")
    assert main(["capture", str(texts), "--model", str(tiny_model_dir), "--keys", "pattern",
                 "--out", str(folder / "run.h5"), "--quiet"]) == 0
    return folder / "run.h5"


def test_run_metrics_to_parquet_at_full_precision_in_row_groups(run_file, tmp_path, monkeypatch, capsys):
    from probe import export, open_run

    monkeypatch.setattr(export, "ROW_GROUP", 7)   # many row groups: the writer streams
    out = tmp_path / "tables"
    assert main(["export", str(run_file), "--out", str(out), "--group-by", "kind"]) == 0
    assert "wrote 4 tables" in capsys.readouterr().out
    table = pq.read_table(out / "example_metrics.parquet")
    assert pq.ParquetFile(out / "example_metrics.parquet").num_row_groups > 1
    assert str(table.schema.field("example").type) == "int64"
    assert str(table.schema.field("entropy").type) == "double"
    with open_run(run_file) as run:
        ex = run[3]
        values = M.example_metrics(ex, list(run.layers), 1)
    rows = table.filter((table.column("example").to_numpy() == 3)).to_pylist()
    assert rows[0]["kind"] == "=k1"                      # text as stored, nothing defused
    for row in rows:
        li = list(run.layers).index(row["layer"])
        for name in M.PROFILE:
            want = float(values[name][li, row["head"]])
            assert (row[name] is None and np.isnan(want)) or row[name] == want, name  # exact
    groups = pq.read_table(out / "by_kind.parquet")
    assert sorted(set(groups.column("kind").to_pylist())) == ["=k0", "=k1"]


def test_output_folder_csvs_become_typed_parquet(tmp_path):
    study = tmp_path / "study"
    (study / "sub").mkdir(parents=True)
    write_csv(study / "stats.csv", [
        {"layer": 0, "head": 1, "kind": "=SUM(A1)", "estimate": -0.25, "q": float("nan")},
        {"layer": 2, "head": 3, "kind": "copula", "estimate": 1.5e-7, "q": 0.01}],
        ["layer", "head", "kind", "estimate", "q"])
    write_csv(study / "sub" / "layers.csv", [{"layer": 0, "head": "all", "estimate": 0.5}],
              ["layer", "head", "estimate"])
    out = tmp_path / "pq"
    assert main(["export", str(study), "--out", str(out)]) == 0
    t = pq.read_table(out / "stats.parquet")
    assert t.column("kind").to_pylist() == ["=SUM(A1)", "copula"]   # the CSV's defusing undone
    assert t.column("estimate").to_pylist() == [-0.25, 1.5e-7]
    assert t.column("q").to_pylist() == [None, 0.01]
    assert str(t.schema.field("layer").type) == "int64"
    layers = pq.read_table(out / "sub" / "layers.parquet")
    assert layers.column("head").to_pylist() == ["all"]


def test_export_errors_are_one_line(tmp_path, run_file, monkeypatch, capsys):
    assert main(["export", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "holds no CSV table" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "pyarrow", None)   # as if the extra were not installed
    assert main(["export", str(run_file), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("probe: error: Parquet export needs pyarrow") and "Traceback" not in err
    assert not (tmp_path / "o2").exists()
    assert main(["export", str(run_file), "--out", str(tmp_path / "o3"), "--to", "csv"]) == 0
    assert (tmp_path / "o3" / "example_metrics.csv").exists()


def test_parquet_writer_leaves_nothing_on_failure(tmp_path):
    from probe.export import parquet_rows

    with pytest.raises(RuntimeError):
        with parquet_rows(tmp_path / "t.parquet", ["example", "x"], numeric=["x"]) as write:
            write({"example": 0, "x": 1.0})
            raise RuntimeError("killed mid-table")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="csv or parquet"):
        from probe.report import write_report
        write_report([], tmp_path, fmt="xlsx")
