"""Statement pairs (original vs counterfactual): loading and validation.

A pair file is JSONL (one object a line) or CSV with the columns ``id``, ``original``,
``counterfactual``, and optionally ``kind``, ``target`` and ``group`` (the id of a pair in
another set it should be compared with, e.g. the negation pair whose original a word-swap pair
shares). Other fields are kept as metadata. Errors name the file and line.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "p.jsonl")
>>> _ = open(path, "w").write('{"id": "p1", "original": "A robin is a bird.", '
...                           '"counterfactual": "A robin is not a bird.", "kind": "copula"}\\n')
>>> load_pairs(path)[0].kind
'copula'
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .readers import json_object

REQUIRED = ("id", "original", "counterfactual")


@dataclass
class Pair:
    id: str
    original: str
    counterfactual: str
    kind: str | None = None
    target: str | None = None
    group: str | None = None
    meta: dict = field(default_factory=dict)
    line: int = 0


def _rows(path: Path):
    """(line, dict) for each record of a JSONL or CSV pair file."""
    if not path.exists():
        raise InputError(f"pair file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not valid UTF-8 ({err.reason})") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}:1: CSV header lacks {', '.join(missing)} "
                             f"(columns: {', '.join(reader.fieldnames or []) or 'none'})")
        for row in reader:
            yield reader.line_num, dict(row)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        yield number, json_object(path, number, line)


def load_pairs(path) -> list[Pair]:
    """Load and validate a pair file; every problem is reported with its line number."""
    path = Path(path)
    pairs, seen = [], {}
    for number, row in _rows(path):
        where = f"{path}:{number}"
        missing = [k for k in REQUIRED if row.get(k) is None or (k == "id" and row[k] == "")]
        if missing:
            raise InputError(f"{where}: missing field{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(missing)}")
        pid = str(row["id"])
        for side in ("original", "counterfactual"):
            if not isinstance(row[side], str):
                raise InputError(f"{where}: {side} must be a string")
            if not row[side].strip():
                raise InputError(f"{where}: pair {pid!r} has an empty {side}")
        if row["original"].strip() == row["counterfactual"].strip():
            raise InputError(f"{where}: pair {pid!r} has identical original and counterfactual")
        if pid in seen:
            raise InputError(f"{where}: duplicate id {pid!r} (first on line {seen[pid]})")
        seen[pid] = number
        meta = {k: v for k, v in row.items()
                if k not in (*REQUIRED, "kind", "target", "group") and v not in (None, "")}
        pairs.append(Pair(pid, row["original"], row["counterfactual"],
                          kind=row.get("kind") or None, target=row.get("target") or None,
                          group=None if row.get("group") in (None, "") else str(row["group"]),
                          meta=meta, line=number))
    if not pairs:
        raise InputError(f"{path} holds no pairs")
    return pairs
