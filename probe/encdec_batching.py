"""In-memory encoder-decoder runs: texts (or Whisper's audio features) and decoder targets ->
token id rows -> length-sorted batches -> one Capture of
:class:`~probe.encdec_recording.EncDecExample`.

This module's one job is that batching. :func:`capture_inputs` is what
``EncoderDecoderProbe.run`` does, the counterpart of :func:`probe.batching.capture_texts`; it
uses only the probe's public calls (:meth:`~probe.encdec.EncoderDecoderProbe.run_ids` and
:meth:`~probe.encdec.EncoderDecoderProbe.decoder_start`). It imports :mod:`probe.captures`,
:mod:`probe.errors` and :mod:`probe.inputs`; only :mod:`probe.encdec` imports it.

>>> import transformers as T
>>> from probe import EncoderDecoderProbe
>>> model = T.T5Model(T.T5Config(vocab_size=64, d_model=16, num_layers=1, num_heads=2, d_kv=8,
...                              d_ff=16)).eval()
>>> model.config.decoder_start_token_id = 3
>>> p = EncoderDecoderProbe(model)
>>> decoder_rows(p, 2, None, None), decoder_rows(p, 2, None, [[3, 9], [3]])
([[3], [3]], [[3, 9], [3]])
"""

from __future__ import annotations

import numpy as np
import torch

from .captures import Capture
from .errors import InputError
from .inputs import batches_by_length, encode, max_length_of


def decoder_rows(probe, n: int, decoder_texts, decoder_input_ids) -> list[list[int]]:
    """The decoder's input id rows for ``n`` encoder inputs: ``decoder_input_ids`` if given;
    else ``decoder_start_token_id`` followed by the tokens of each of ``decoder_texts`` but its
    last (the decoder's input when trained on that target: transformers'
    ``shift_tokens_right`` of the labels); else the start token alone."""
    if decoder_input_ids is not None:
        if decoder_texts is not None:
            raise InputError("give decoder_texts or decoder_input_ids, not both")
        rows = [list(map(int, r)) for r in decoder_input_ids]
    elif decoder_texts is not None:
        if isinstance(decoder_texts, str):
            raise InputError("decoder_texts must be a list of strings, one per input; wrap "
                             "it: [text]")
        if probe.tokenizer is None:
            raise InputError("decoder_texts need a tokenizer: EncoderDecoderProbe(model, "
                             "tokenizer)")
        labels = encode(probe.tokenizer, list(decoder_texts), max_length=None).ids
        rows = [[probe.decoder_start()] + row[:-1] for row in labels]
    else:
        rows = [[probe.decoder_start()] for _ in range(n)]
    if len(rows) != n:
        raise InputError(f"{len(rows)} decoder inputs for {n} encoder inputs; give one each")
    if any(len(r) == 0 for r in rows):
        raise InputError("a decoder input is empty: give at least one token id")
    return rows


def capture_inputs(probe, texts=None, decoder_texts=None, batch_size: int = 32, *,
                   input_features=None, decoder_input_ids=None, truncate: bool = False,
                   meta=None) -> Capture:
    """Capture encoder inputs and the decoder reading a target with an attached encoder-decoder
    ``probe``: one example per input, in input order.

    The encoder reads ``texts`` (tokenised with the probe's tokenizer) or, for speech models
    (Whisper), ``input_features`` ``[example, mel, frame]``; the decoder reads
    :func:`decoder_rows`. Inputs are batched by length and right-padded.
    """
    if (texts is None) == (input_features is None):
        raise InputError("run() needs exactly one encoder input: texts (a list of strings) "
                         "or input_features (Whisper: [example, mel, frame])")
    enc_rows, features, texts_ = None, None, None
    if texts is not None:
        if probe.tokenizer is None:
            raise InputError("run(texts) needs a tokenizer: EncoderDecoderProbe(model, "
                             "tokenizer)")
        texts_ = [texts] if isinstance(texts, str) else list(texts)
        enc_rows = encode(probe.tokenizer, texts_, truncate=truncate,
                          max_length=max_length_of(probe.model, probe.tokenizer)).ids
        n = len(enc_rows)
    else:
        features = torch.as_tensor(np.asarray(input_features))
        if features.dim() != 3:
            raise InputError("input_features must be [example, mel, frame], got shape "
                             f"{tuple(features.shape)}")
        n = features.shape[0]
    dec_rows = decoder_rows(probe, n, decoder_texts, decoder_input_ids)
    if meta is not None and len(meta) != n:
        raise InputError(f"meta has {len(meta)} entries for {n} inputs")
    lengths = [len(r) for r in enc_rows] if enc_rows is not None else [len(r) for r in dec_rows]
    examples = [None] * n
    for rows in batches_by_length(lengths, batch_size):
        capture = probe.run_ids(
            None if enc_rows is None else [enc_rows[i] for i in rows],
            [dec_rows[i] for i in rows],
            input_features=None if features is None else features[rows])
        for j, i in enumerate(rows):
            ex = capture[j]
            ex.index, ex.meta = i, dict(meta[i]) if meta is not None else {}
            ex.text = texts_[i] if texts_ is not None else None
            ex.decoder_text = decoder_texts[i] if decoder_texts is not None else None
            examples[i] = ex
    return Capture(examples, probe.exposed_keys)
