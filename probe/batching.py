"""In-memory runs: texts -> token ids -> length-sorted, right-padded batches -> one Capture.

:func:`capture_texts` is what ``AttentionProbe.run`` does; it uses only the probe's public
forward-and-capture call (:meth:`~probe.capture.AttentionProbe.capture_ids`). Runs written
to a file are :mod:`probe.runner`'s (``AttentionProbe.run_to_file``).

Imports :mod:`probe.captures`, :mod:`probe.errors` and :mod:`probe.inputs` (and, inside
functions, :mod:`probe.readers`).

>>> from probe import AttentionProbe, load_model
>>> model, tokenizer = load_model()
>>> with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
...     caps = capture_texts(p, ["A robin is a bird.", "No."], batch_size=1)
>>> [ex.text for ex in caps], caps[1].tokens
(['A robin is a bird.', 'No.'], ['[CLS]', 'no', '.', '[SEP]'])
"""

from __future__ import annotations

from .captures import Capture
from .errors import InputError
from .inputs import batches_by_length, encode, max_length_of


def capture_texts(probe, texts, batch_size: int = 32, *, truncate: bool = False, meta=None,
                  ids=None) -> Capture:
    """Capture ``texts`` with an attached ``probe``: one Example per text, in input order.

    Texts are batched by length (less padding) and right-padded, so each is computed as if
    run alone. A text longer than the model's maximum is refused unless ``truncate=True``
    (then ``meta["truncated"] = True``). ``meta`` (one dict per text) and ``ids`` are
    attached to the examples.
    """
    if probe.tokenizer is None:
        raise InputError("run() needs a tokenizer: AttentionProbe(model, tokenizer)")
    from .readers import records_from_texts

    texts = [texts] if isinstance(texts, str) else list(texts)
    records = list(records_from_texts(texts, meta, ids))
    encoded = encode(probe.tokenizer, texts, max_length=max_length_of(probe.model, probe.tokenizer),
                     truncate=truncate, ids=ids)
    examples = [None] * len(texts)
    for rows in batches_by_length([len(r) for r in encoded.ids], batch_size):
        capture = probe.capture_ids([encoded.ids[i] for i in rows])
        for j, i in enumerate(rows):
            ex = capture[j]
            ex.text, ex.index, ex.meta = texts[i], i, dict(records[i].meta)
            if encoded.truncated[i]:
                ex.meta["truncated"] = True
            examples[i] = ex
    return Capture(examples, probe.exposed_keys)
