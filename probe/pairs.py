"""Statement pairs (original vs counterfactual): loading, validation, clusters, duplicates.

A pair file is JSONL (one object a line) or CSV with the columns ``id``, ``original``,
``counterfactual``, and optionally:

- ``kind``: the construction (results are reported per kind);
- ``control``: the original with a non-negating edit at the place of the negation
  ("The robin is really a bird." beside "The robin is not a bird.");
- ``cue``: the cue as text, or a character span ``[start, stop]`` (CSV: ``start:stop``) in the
  counterfactual; overrides cue detection;
- ``cluster``: pairs that are not independent (one template, one source sentence) share it;
- ``target``: the word that carries the edit (kept; used by patching);
- ``group``: the id of a pair of another set to compare with (kept as metadata).

Other fields are kept as metadata. Errors name the file and line. :class:`Side` names the
three sentences of a pair wherever they are told apart (fields, run metadata, comparisons).

Imports :mod:`probe.errors` and :mod:`probe.readers`.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "p.jsonl")
>>> _ = open(path, "w").write('{"id": "p1", "original": "A robin is a bird.", '
...                           '"counterfactual": "A robin is not a bird.", "kind": "copula", '
...                           '"control": "A robin is really a bird."}\\n')
>>> p = load_pairs(path)[0]
>>> p.kind, p.control
('copula', 'A robin is really a bird.')
>>> assign_clusters([p, Pair("p2", "A robin is a bird.", "A robin isn't a bird.")])
['p1', 'p1']
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import unicodedata
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from .errors import InputError
from .readers import json_object, split_lines


class Label(str, Enum):
    """An enum whose members are the strings that files and tables hold: a member equals,
    hashes, prints and serialises (JSON, CSV) as its value, so code compares members while
    files keep plain strings.

    >>> Side.CONTROL == "control", f"{Side.CONTROL}", Side("original") is Side.ORIGINAL
    (True, 'control', True)
    """

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value


class Side(Label):
    """The three sentences of a pair: the ``side`` of every example of a pair run."""

    ORIGINAL = "original"
    COUNTERFACTUAL = "counterfactual"
    CONTROL = "control"


REQUIRED = ("id", Side.ORIGINAL.value, Side.COUNTERFACTUAL.value)
OPTIONAL = ("kind", "target", "group", Side.CONTROL.value, "cue", "cluster")


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
    control: str | None = None
    cue: str | list | None = None
    cluster: str | None = None


def _rows(path: Path):
    """(line, dict) for each record of a JSONL or CSV pair file."""
    if not path.exists():
        raise InputError(f"pair file {path} does not exist")
    if path.is_dir():
        raise InputError(f"pair file {path} is a directory; give a .jsonl or .csv file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not valid UTF-8 ({err.reason})") from None
    text = text.removeprefix("\ufeff")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}:1: CSV header lacks {', '.join(missing)} "
                             f"(columns: {', '.join(reader.fieldnames or []) or 'none'})")
        for row in reader:
            yield reader.line_num, dict(row)
        return
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        yield number, json_object(path, number, line)


def _cue_field(value, where: str):
    """A cue as given: text, or a ``[start, stop]`` span (``"start:stop"`` in CSV)."""
    if value in (None, ""):
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", value)
        return [int(m[1]), int(m[2])] if m else value
    if (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        return list(value)
    raise InputError(f"{where}: cue must be a text or a [start, stop] character span, "
                     f"not {value!r}")


def _text_field(row, name, pid, where):
    value = row.get(name)
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: pair {pid!r}: {name} must be a non-empty string")
    return value


def check_texts(original, counterfactual, pid: str, where: str, control=None):
    """The rules every pair's texts follow, from a file or a notebook: non-empty strings, the
    two sides different, a control (returned) different from both.

    >>> check_texts("A cat.", "No cat.", "p1", "compare()", control="A dog.")
    'A dog.'
    >>> check_texts("A cat.", "A cat. ", "p1", "pairs.jsonl:3")
    Traceback (most recent call last):
    probe.errors.InputError: pairs.jsonl:3: pair 'p1' has identical original and counterfactual
    """
    for side, text in ((Side.ORIGINAL, original), (Side.COUNTERFACTUAL, counterfactual)):
        if not isinstance(text, str):
            raise InputError(f"{where}: {side} must be a string")
        if not text.strip():
            raise InputError(f"{where}: pair {pid!r} has an empty {side}")
    if original.strip() == counterfactual.strip():
        raise InputError(f"{where}: pair {pid!r} has identical original and counterfactual")
    if control is not None and control.strip() in (original.strip(), counterfactual.strip()):
        raise InputError(f"{where}: pair {pid!r}: the control must differ from both the "
                         "original and the counterfactual")
    return control


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
        control = check_texts(row["original"], row["counterfactual"], pid, where,
                              _text_field(row, "control", pid, where))
        if pid in seen:
            raise InputError(f"{where}: duplicate id {pid!r} (first on line {seen[pid]})")
        seen[pid] = number
        meta = {k: v for k, v in row.items()
                if k not in (*REQUIRED, *OPTIONAL) and v not in (None, "")}
        cluster = row.get("cluster")
        pairs.append(Pair(pid, row["original"], row["counterfactual"],
                          kind=None if row.get("kind") in (None, "") else str(row["kind"]),
                          target=row.get("target") or None,
                          group=None if row.get("group") in (None, "") else str(row["group"]),
                          meta=meta, line=number, control=control,
                          cue=_cue_field(row.get("cue"), where),
                          cluster=None if cluster in (None, "") else str(cluster)))
    if not pairs:
        raise InputError(f"{path} holds no pairs")
    return pairs


def sentence_key(text: str) -> str:
    """A sentence as compared for clusters and duplicates: NFC, spaces collapsed, case kept.

    >>> sentence_key("  The  robin is a bird. ")
    'The robin is a bird.'
    """
    return " ".join(unicodedata.normalize("NFC", text).split())


def assign_clusters(pairs) -> list[str]:
    """The cluster of every pair: its ``cluster`` field, else one cluster per group of pairs
    that share a sentence (original or counterfactual), named after its first pair's id."""
    parent = list(range(len(pairs)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with = {}
    for i, p in enumerate(pairs):
        if p.cluster is not None:
            continue
        for text in (p.original, p.counterfactual):
            j = first_with.setdefault(sentence_key(text), i)
            parent[root(i)] = root(j)
    first_of_root: dict[int, int] = {}
    for i in range(len(pairs)):
        first_of_root.setdefault(root(i), i)
    return [p.cluster if p.cluster is not None else pairs[first_of_root[root(i)]].id
            for i, p in enumerate(pairs)]


def duplicates(pairs) -> dict[int, str]:
    """``{index: id of the first pair}`` for pairs whose original and counterfactual repeat an
    earlier pair's (compared by :func:`sentence_key`); such a pair is counted once."""
    first, out = {}, {}
    for i, p in enumerate(pairs):
        k = (sentence_key(p.original), sentence_key(p.counterfactual))
        if k in first:
            out[i] = pairs[first[k]].id
        else:
            first[k] = i
    return out


def slugs(ids) -> list[str]:
    """File-name-safe, unique slugs of pair ids; the original id stays in the tables.

    ASCII letters, digits, ``.``, ``_`` and ``-`` are kept, anything else becomes ``-``; a slug
    that had to change, or is long, ends in 8 hex digits of the id's hash, so two ids never
    share a slug.

    >>> slugs(["neg-0001", "blimp/adjunct/12", "..", "café au lait"])
    ['neg-0001', 'blimp-adjunct-12-80507ba3', 'pair-e6fc5bb9', 'caf-au-lait-b30477cc']
    """
    out, used = [], set()
    for pid in ids:
        pid = str(pid)
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", pid).strip(".-")[:48] or "pair"
        slug = base
        if base != pid or slug.lower() in used:
            slug = f"{base}-{hashlib.blake2b(pid.encode('utf-8'), digest_size=4).hexdigest()}"
        n = 2
        while slug.lower() in used:
            slug, n = f"{slug}-{n}", n + 1
        used.add(slug.lower())
        out.append(slug)
    return out
