"""Before a run writes anything: one validating pass over the input, the provenance every run
file records, the check that a resumed file was written with the same settings, shard
parsing, the output folder, and the fixed sizes of the stored tensors.

Imports torch, :mod:`probe.errors`, :mod:`probe.inputs`, :mod:`probe.names` and
:mod:`probe.store` (with :mod:`probe.store.layout`), and inside functions transformers,
:mod:`probe.launch` and :mod:`probe.models`; never the runner.
"""

from __future__ import annotations

import hashlib
import json
import os
from itertools import islice

import torch

from . import names
from .errors import InputError
from .inputs import encode, max_length_of
from .store import RESUME_MUST_MATCH, read_attr, utc_now
from .store.layout import differing_settings


def windows(records, window):
    it = iter(records)
    while True:
        chunk = list(islice(it, window))
        if not chunk:
            return
        yield chunk


def validate_input(probe, make_records, *, truncate: bool, window: int):
    """One streaming pass over the input: every error found before anything is written.

    Returns ``(n_examples, sha256 of the texts and metadata, typical sizes)``, the last the
    mean number of tokens and of tokens squared per example (what chunks are sized by).
    """
    digest = hashlib.sha256()
    n, tokens, squares = 0, 0, 0
    max_len = max_length_of(probe.model, probe.tokenizer)
    for chunk in windows(make_records(), window):
        enc = encode(probe.tokenizer, [r.text for r in chunk], max_length=max_len,
                     truncate=truncate, ids=[_name(r) for r in chunk])
        tokens += sum(len(x) for x in enc.ids)
        squares += sum(len(x) ** 2 for x in enc.ids)
        for r in chunk:
            digest.update(r.text.encode("utf-8"))
            digest.update(b"\0")
            digest.update(json.dumps(r.meta, sort_keys=True, default=str).encode("utf-8"))
            digest.update(b"\n")
        n += len(chunk)
    if n == 0:
        raise InputError("the input holds no texts")
    return n, digest.hexdigest(), (tokens / n, squares / n)


def _name(record) -> str:
    rid = record.meta.get("id")
    where = f"line {record.line}" if record.line else f"#{record.index}"
    return f"{rid!r} ({where})" if rid is not None else where


def provenance(probe) -> dict:
    """Model, tokenizer and library facts recorded in every run file."""
    import transformers

    from . import __version__
    from .models import model_fingerprint

    model = probe.model
    fingerprint, method = model_fingerprint(model)
    config = model.config
    return {
        "model": str(getattr(config, "_name_or_path", "") or type(model).__name__),
        "model_class": type(model).__name__,
        "model_type": str(config.model_type),
        "model_config": config.to_json_string(use_diff=False),
        "model_fingerprint": fingerprint,
        "model_fingerprint_method": method,
        "tokenizer": str(getattr(probe.tokenizer, "name_or_path", "")),
        "tokenizer_class": type(probe.tokenizer).__name__,
        "special_tokens": sorted(str(t) for t in getattr(probe.tokenizer, "all_special_tokens", [])),
        "probe_version": __version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "h5py_version": __import__("h5py").__version__,
        "attn_implementation": str(probe.original_attn_implementation),
        "capture_implementation": "probe eager (probe_capture backend)",
        "model_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "created": utc_now(),
    }


def check_resume(f, wanted: dict, path) -> None:
    """Refuse to resume a file written with other settings (see
    :data:`probe.store.layout.IDENTITY`)."""
    have = {name: read_attr(f.attrs.get(name)) for name in RESUME_MUST_MATCH}
    diffs = [f"{name}: file has {_short(have[name])}, this run has {_short(wanted.get(name))}"
             for name in differing_settings(have, wanted, RESUME_MUST_MATCH)]
    if diffs:
        raise InputError(f"cannot resume {path}: settings differ ({'; '.join(diffs)}). Resume "
                         "with the same settings, or write to a new file")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:60] + "...]"


def shard_parts(n_examples: int, window: int, batch_size: int, shard_k: int, n_shards: int):
    """The rows of every batch of the plan that shard ``shard_k`` of ``n_shards`` writes,
    window by window: for each input window, one entry per batch in the order
    :func:`~probe.inputs.batches_by_length` gives them: ``(a, b)``, the shard writes the
    batch's rows ``a:b`` (in batch order), or None.

    Shard K takes the examples at positions ``[n_examples * K // N, n_examples * (K + 1) // N)``
    of the plan's order (windows in turn, batches in turn), so shards differ by at most one
    example. A batch that straddles two shards is computed whole by both, each writing its
    own rows: splitting a batch would change its padding and the numbers with it (in the last
    bits), and a combined run must equal an unsharded one; at most N - 1 batches are computed
    twice. A window of n records makes n // batch_size full batches and one of n % batch_size
    whatever the lengths, so the parts need no tokenizing.

    >>> list(shard_parts(10, window=8, batch_size=3, shard_k=0, n_shards=2))
    [[(0, 3), (0, 2), None], [None]]
    >>> list(shard_parts(10, window=8, batch_size=3, shard_k=1, n_shards=2))
    [[None, (2, 3), (0, 2)], [(0, 2)]]
    """
    lo, hi = n_examples * shard_k // n_shards, n_examples * (shard_k + 1) // n_shards
    position = 0  # of the batch's first row in the plan's order
    for start in range(0, n_examples, window):
        n = min(window, n_examples - start)
        parts = []
        for size in [batch_size] * (n // batch_size) + [n % batch_size] * bool(n % batch_size):
            a, b = max(lo - position, 0), min(hi - position, size)
            parts.append((a, b) if a < b else None)
            position += size
        yield parts


def shard_size(n_examples: int, shard_k: int, n_shards: int) -> int:
    """How many examples shard ``shard_k`` of ``n_shards`` writes (see :func:`shard_parts`).

    >>> [shard_size(7, k, 3) for k in range(3)]
    [2, 2, 3]
    """
    return n_examples * (shard_k + 1) // n_shards - n_examples * shard_k // n_shards


def parse_shard(shard) -> tuple[int, int]:
    """``"K/N"``, ``(K, N)`` or ``"auto"`` (from the launcher's environment, see
    :mod:`probe.launch`) -> ``(K, N)`` with 0 <= K < N.

    >>> parse_shard("1/4")
    (1, 4)
    """
    if shard is None:
        return 0, 1
    if shard == "auto":
        from .launch import shard_from_env

        launch = shard_from_env()
        return launch.rank, launch.world_size
    try:
        k, n = (shard.split("/") if isinstance(shard, str) else shard)
        k, n = int(k), int(n)
    except (ValueError, TypeError):
        raise InputError(f"shard {shard!r}: expected K/N, e.g. 0/4") from None
    if not 0 <= k < n:
        raise InputError(f"shard {shard!r}: K must be in 0..N-1")
    return k, n


def make_parent(path) -> None:
    """Create the folder that will hold ``path``, or say clearly why it cannot be."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the folder {parent} for {path}: {err.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise InputError(f"the folder {parent} is not writable; choose another output path")


def probe_fingerprint(probe) -> str:
    from .models import model_fingerprint

    return model_fingerprint(probe.model)[0]


def key_sizes(probe, text, stored):
    """Fixed sizes of every stored tensor's axes (0 for token axes), from one forward."""
    ids = probe.tokenizer([text])["input_ids"][0][:8]
    capture = probe.capture_ids([ids])
    ex = capture[0]
    head_map = {layer: ex.head_map[layer] for layer in sorted({names.parse_key(k)[0] for k in stored})}
    sizes = {}
    for key in stored:
        _, component = names.parse_key(key)
        shape = ex._get(key).shape
        sizes[key] = [0 if axis in names.SEQUENCE_AXES else int(s)
                      for axis, s in zip(names.AXES[component], shape)]
    return sizes, head_map
