"""Writing output files safely: complete or absent, never half-written, never a formula.

- :func:`atomic_path` yields a temporary name beside the target and renames it over the
  target only when the block ends without an exception;
- :func:`write_csv` writes rows through it; text cells that a spreadsheet would run as a
  formula (starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return) get a leading
  ``'``, as the OWASP CSV-injection guidance says; numbers are written as numbers;
- :func:`begin_folder` / :func:`finish_folder`: a results folder carries a completion marker
  written last, so a reader can tell a finished folder from an interrupted one.

Imports numpy.

>>> import tempfile, os, csv
>>> d = tempfile.mkdtemp()
>>> write_csv(os.path.join(d, "t.csv"), [{"a": "=1+2", "b": -0.5}], ["a", "b"])
>>> open(os.path.join(d, "t.csv")).read().splitlines()
['a,b', "'=1+2,-0.5"]
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import time
from pathlib import Path

import numpy as np

COMPLETE_MARKER = "COMPLETE.json"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it over ``path`` on success only."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def cell(value):
    """One CSV cell: floats to 6 significant digits (NaN empty), formula-like text defused."""
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{float(value):.6g}"
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


@contextlib.contextmanager
def csv_rows(path, columns):
    """A function that writes one row (a dict) to ``path``; the file appears, complete, when
    the block ends without an exception. Rows stream: nothing is held in memory."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        yield lambda row: writer.writerow({k: cell(row.get(k, "")) for k in columns})


def write_csv(path, rows, columns) -> None:
    """Write ``rows`` (dicts) with ``columns`` to ``path``, atomically."""
    with csv_rows(path, columns) as write:
        for row in rows:
            write(row)


def begin_folder(folder) -> Path:
    """Create ``folder`` and remove its completion marker: from now on it is unfinished."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / COMPLETE_MARKER).unlink(missing_ok=True)
    for stale in folder.rglob(".*.tmp"):  # left by a writer that was killed
        pid = stale.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def finish_folder(folder, files, **info) -> None:
    """Write the completion marker last, listing the files the folder holds."""
    write_text(Path(folder) / COMPLETE_MARKER,
               json.dumps({"complete": True, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "files": sorted(str(Path(f).relative_to(folder)) for f in files),
                           **info}, indent=2, default=str) + "\n")


def is_complete(folder) -> bool:
    return (Path(folder) / COMPLETE_MARKER).exists()
