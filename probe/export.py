"""Tables as Parquet: the engine of ``probe export``. Imports :mod:`probe.errors` and
:mod:`probe.outputs` (and, inside functions, :mod:`probe.report`, :mod:`probe.store` and
pyarrow, an optional extra, imported only when a table is written).

Two sources:

- a run file: the per-example metric tables of ``probe metrics`` (:mod:`probe.report`),
  computed from the stored tensors at full precision and streamed to Parquet in row groups
  (memory does not grow with the number of examples);
- an output folder of ``probe negation|counterfactual|analyze|patch|metrics``: each CSV table
  converted, with typed columns. Those values are what the CSV holds: floats to 6 significant
  digits, empty cells as nulls, and the leading ``'`` that defuses formula-like text removed.

Column types are fixed by name, never guessed from the first rows: ``example``, ``layer``,
``head``, ``position``, ``n``, ``n_pairs`` and ``n_clusters`` are int64 (``head`` is text in
tables that also hold ``all``), the metric columns float64, everything else text.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "stats.csv").write_text("layer,head,metric,estimate\\n0,1,'=x,0.5\\n0,2,y,\\n")
>>> table = read_csv_table(folder / "stats.csv")
>>> table.column("metric").to_pylist(), table.column("estimate").to_pylist()
(['=x', 'y'], [0.5, None])
"""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path

from .errors import InputError
from .outputs import _FORMULA_START, atomic_path

#: columns that hold integers wherever they appear
INT_COLUMNS = frozenset({"example", "layer", "head", "position", "n", "n_pairs", "n_clusters",
                         "n_positions", "offset"})
#: columns that hold text wherever they appear (everything not numeric by its values is text too)
TEXT_COLUMNS = frozenset({"id", "kind", "cluster", "status", "metric", "contrast", "class",
                          "token", "sink_token", "target", "source", "component", "family"})
ROW_GROUP = 65_536


def pyarrow():
    """The pyarrow module, or a clear error naming the extra that installs it."""
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise InputError("Parquet export needs pyarrow: pip install 'probe[parquet]' "
                         "(or pip install pyarrow); --to csv works without it") from None
    return pa


def _type(pa, column: str, numeric: set[str]):
    if column in INT_COLUMNS:
        return pa.int64()
    if column in numeric:
        return pa.float64()
    return pa.string()


def _value(value, kind):
    if value is None or value == "":
        return None
    if kind == "int":
        return int(value)
    if kind == "float":
        value = float(value)
        return None if value != value else value
    return str(value)


@contextlib.contextmanager
def parquet_rows(path, columns, *, numeric=()):
    """Like :func:`probe.outputs.csv_rows`, to a Parquet file: a function that takes one row (a
    dict); rows go out in row groups of :data:`ROW_GROUP`, and the file appears, complete,
    when the block ends without an exception. ``numeric``: the float64 columns."""
    pa = pyarrow()
    import pyarrow.parquet as pq

    numeric = set(numeric)
    schema = pa.schema([(c, _type(pa, c, numeric)) for c in columns])
    kinds = ["int" if t == pa.int64() else "float" if t == pa.float64() else "str"
             for t in schema.types]
    buffer = {c: [] for c in columns}
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(str(tmp), schema)
        try:
            def flush():
                if buffer[columns[0]]:
                    writer.write_table(pa.table({c: buffer[c] for c in columns}, schema=schema))
                    for c in columns:
                        buffer[c].clear()

            def write(row):
                for c, kind in zip(columns, kinds):
                    buffer[c].append(_value(row.get(c), kind))
                if len(buffer[columns[0]]) >= ROW_GROUP:
                    flush()

            yield write
            flush()
        finally:
            writer.close()


def write_parquet(path, rows, columns, *, numeric=()) -> None:
    """Write ``rows`` (dicts) with ``columns`` to a Parquet file, atomically."""
    with parquet_rows(path, columns, numeric=numeric) as write:
        for row in rows:
            write(row)


def _undefuse(text: str) -> str:
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_START) else text


def read_csv_table(path):
    """One of probe's CSV tables as a typed pyarrow Table (see the module docstring)."""
    pa = pyarrow()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            columns = next(reader)
        except StopIteration:
            raise InputError(f"{path} is empty: not one of probe's tables") from None
        rows = [[_undefuse(v) for v in row] for row in reader]
    data = {}
    for j, c in enumerate(columns):
        values = [row[j] if j < len(row) else "" for row in rows]
        if c in INT_COLUMNS and all(_is_int(v) for v in values):
            data[c] = pa.array([_value(v, "int") for v in values], pa.int64())
        elif c not in TEXT_COLUMNS and all(v == "" or _is_float(v) for v in values) \
                and any(v != "" for v in values):
            data[c] = pa.array([_value(v, "float") for v in values], pa.float64())
        else:
            data[c] = pa.array([v for v in values], pa.string())
    return pa.table(data)


def _is_int(v: str) -> bool:
    return v == "" or v.lstrip("-").isdigit()


def _is_float(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def export_folder(folder, out_dir) -> list[str]:
    """Every CSV table of an output folder (subfolders included) as Parquet in ``out_dir``,
    with the same relative names."""
    import pyarrow.parquet as pq

    folder, out_dir = Path(folder), Path(out_dir)
    tables = sorted(folder.rglob("*.csv"))
    if not tables:
        raise InputError(f"{folder} holds no CSV table: give a run file or an output folder "
                         "of probe negation, counterfactual, analyze, patch or metrics")
    files = []
    for table in tables:
        target = out_dir / table.relative_to(folder).with_suffix(".parquet")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = read_csv_table(table)
        with atomic_path(target) as tmp:
            pq.write_table(data, str(tmp))
        files.append(str(target))
    return files


def add_export_parser(subparsers):
    """Add the ``export`` subcommand to an argparse subparsers object."""
    sp = subparsers.add_parser("export", help="tables for pandas, polars or DuckDB: a run's "
                               "per-example metrics, or an output folder's CSVs, as Parquet")
    sp.add_argument("source", help="a run file (RUN.h5), or an output folder of probe negation, "
                    "counterfactual, analyze, patch or metrics")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--to", choices=["parquet", "csv"], default="parquet",
                    help="parquet (default; needs pyarrow) or csv (a run only: as probe metrics)")
    sp.add_argument("--group-by", action="append", default=None, metavar="FIELD",
                    help="a run only: also per-group means by this metadata field (repeatable)")
    sp.add_argument("--window", type=int, default=1, help="a run only: as probe metrics")
    sp.set_defaults(func=cmd_export)
    return sp


def cmd_export(args) -> int:
    source, out = Path(args.source), Path(args.out)
    if not source.exists():
        raise InputError(f"{source} does not exist: give a run file or an output folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder")
    if source.is_dir():
        if args.to != "parquet":
            raise InputError("an output folder's tables are CSV already: use --to parquet")
        if args.group_by or args.window != 1:
            raise InputError("--group-by and --window apply to a run file, not to a folder")
        pyarrow()
        out.mkdir(parents=True, exist_ok=True)
        files = export_folder(source, out)
    else:
        from .report import write_report
        from .store import open_run

        with open_run(source) as run:
            files = write_report(run, out, group_by=args.group_by or [], window=args.window,
                                 fmt=args.to)
    print(f"wrote {len(files)} tables to {out}: {', '.join(str(Path(f).relative_to(out)) for f in files)}")
    return 0
