"""Read input records from text, JSONL or CSV files, streaming, with line-numbered errors.

A record is ``(index, text, meta)``; ``meta`` holds the optional ``id`` and every other field
of the input, kept as per-example metadata.

Imports :mod:`probe.errors`.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "in.jsonl")
>>> _ = open(path, "w").write('{"id": "a", "text": "A robin is a bird.", "domain": "animals"}\\n')
>>> list(iter_records(path))
[Record(index=0, text='A robin is a bird.', meta={'id': 'a', 'domain': 'animals'}, line=1)]
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError


@dataclass
class Record:
    index: int
    text: str
    meta: dict = field(default_factory=dict)
    line: int = 0


DATA_DIR = Path(__file__).resolve().parent / "data"  # package data: works from a wheel too


def bundled_path(name: str) -> Path:
    """A data file shipped inside the package: ``sentences.txt`` (example sentences) or
    ``negation_pairs.jsonl`` (the bundled negation pairs with their controls).

    >>> bundled_path("negation_pairs.jsonl").name
    'negation_pairs.jsonl'
    """
    path = DATA_DIR / name
    if not path.exists():
        raise InputError(f"bundled data file {name!r} is not in this installation of probe "
                         f"(it has {', '.join(sorted(p.name for p in DATA_DIR.glob('*'))) or 'none'}); "
                         "reinstall probe, or pass your own file")
    return path


def input_format(path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return "txt"


_BREAK = re.compile(r"\r\n|\r|\n")


def split_lines(text: str) -> list[str]:
    r"""Lines of a text: ``\r\n``, ``\r`` and ``\n`` are line breaks, nothing else (not the
    other Unicode separators that ``str.splitlines`` also cuts at).

    >>> split_lines("a\r\nb\rc\nd\u2028e")
    ['a', 'b', 'c', 'd\u2028e']
    """
    lines = _BREAK.split(text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def _lines(path: Path):
    """(line number, text) of a UTF-8 file, failing on the first undecodable line. A byte
    order mark at the start is dropped; ``\r\n``, ``\r`` and ``\n`` end lines."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"input file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"input {path} is a directory; give a .txt, .jsonl or .csv file") from None
    number = 0
    with handle:
        for raw in handle:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"{path}:{number + 1}: not valid UTF-8 ({err.reason} at byte "
                                 f"{err.start}); re-encode the file as UTF-8") from None
            if number == 0:
                text = text.removeprefix("\ufeff")
            for line in split_lines(text) or [""]:
                number += 1
                yield number, line


def iter_records(path, *, skip_blank: bool = False):
    """Stream the records of ``path``; empty texts are errors unless ``skip_blank``.

    Text files: one sentence a line. JSONL: one object a line with ``text`` (and optional
    ``id`` and other fields). CSV: a header row with a ``text`` column.
    """
    path = Path(path)
    fmt = input_format(path)
    index = 0
    if fmt == "csv":
        records = _csv_records(path)
    else:
        records = ((n, line, None) for n, line in _lines(path))
    for number, text, meta in records:
        if fmt == "jsonl":
            if not text.strip():
                continue  # blank separator lines are allowed in JSONL
            text, meta = _parse_json_line(path, number, text)
        if not text.strip():
            if skip_blank:
                continue
            raise InputError(f"{path}:{number}: empty text; remove the line or give a sentence")
        yield Record(index, text, meta or {}, number)
        index += 1


def _no_constant(name):
    raise ValueError(f"{name} is not JSON (the JSON standard has no NaN or Infinity)")


def json_object(path, number: int, line: str) -> dict:
    """One JSONL line as a dict, or an error naming the file and line: strict JSON (no NaN or
    Infinity), and no lone surrogate (``\ud800``), which no UTF-8 file can hold."""
    try:
        obj = json.loads(line, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{number}: malformed JSON ({err.msg} at column {err.colno})") from None
    except ValueError as err:
        raise InputError(f"{path}:{number}: {err}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
    bad = _surrogate(obj)
    if bad is not None:
        raise InputError(f"{path}:{number}: {bad} holds a lone surrogate escape (such as \\ud800), "
                         "which is not a character; fix the text")
    return obj


def _surrogate(value, where="a value"):
    """Where a string inside ``value`` holds a lone surrogate (None if none does)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _surrogate(k, "a field name") if isinstance(k, str) else None
        found = found or _surrogate(v, f"field {k!r}" if isinstance(k, str) else where)
        if found:
            return found
    return None


def _parse_json_line(path, number, line):
    obj = json_object(path, number, line)
    if "text" not in obj:
        raise InputError(f"{path}:{number}: missing field 'text' (fields: {', '.join(obj) or 'none'})")
    text = obj.pop("text")
    if not isinstance(text, str):
        raise InputError(f"{path}:{number}: 'text' must be a string, got {type(text).__name__}")
    return text, obj


def _csv_records(path: Path):
    lines = (line + "\n" for _, line in _lines(path))
    reader = csv.DictReader(lines)
    if reader.fieldnames is None or "text" not in reader.fieldnames:
        raise InputError(f"{path}:1: the CSV header has no 'text' column "
                         f"(columns: {', '.join(reader.fieldnames or []) or 'none'})")
    try:
        for row in reader:
            text = row.pop("text") or ""
            meta = {k: v for k, v in row.items() if k is not None}
            yield reader.line_num, text, meta
    except csv.Error as err:
        raise InputError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None


def records_from_texts(texts, meta=None, ids=None):
    """Records for an in-memory list of texts (optional per-text meta dicts and ids)."""
    if isinstance(texts, str):
        raise InputError("expected a list of texts, got a single string; wrap it: [text]")
    texts = list(texts)
    for name, given in (("meta", meta), ("ids", ids)):
        if given is not None and len(given) != len(texts):
            raise InputError(f"{name} has {len(given)} entries for {len(texts)} texts; give one "
                             "per text, in the same order")
    if meta is not None:
        bad = next((i for i, m in enumerate(meta) if not isinstance(m, dict)), None)
        if bad is not None:
            raise InputError(f"meta[{bad}] is {type(meta[bad]).__name__}, not a dict; meta holds "
                             "one dict of fields per text")
    for i, text in enumerate(texts):
        m = dict(meta[i]) if meta is not None else {}
        if ids is not None:
            m.setdefault("id", ids[i])
        yield Record(i, text, m, i + 1)


