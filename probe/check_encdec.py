"""`probe check-model` for encoder-decoders (T5, BART, Whisper): what
:class:`~probe.encdec.EncoderDecoderProbe` finds, and a self-check against eager attention.

Two inputs of different lengths (texts, or for speech models random ``input_features`` with
a fixed seed) and two decoder inputs of different lengths are captured in one right-padded
batch. For each site (encoder self-attention, decoder self-attention, decoder
cross-attention) and layer, on real tokens only:

======================  ==================================================================
check                   reference
======================  ==================================================================
``{site} pattern``      the model's own eager ``encoder_attentions``, ``decoder_attentions``
                        and ``cross_attentions`` of the same padded batch
``{site} rows``         ``pattern.sum(key)`` against 1
``{site} z``            ``pattern @ v`` (key/value heads expanded)
======================  ==================================================================

Imports numpy, torch, :mod:`probe.names`, :mod:`probe.architectures`, :mod:`probe.inputs` and
:mod:`probe.check` (report and tolerance), and :mod:`probe.encdec` inside its functions;
nothing imports it but :mod:`probe.check`.
"""

from __future__ import annotations

import numpy as np
import torch

from . import names
from .architectures import encoder_decoder_layers, family_name
from .check import SENTENCES, TOLERANCE, CheckReport, _diff
from .inputs import pad, pad_id_of

#: eager output field of each (stack, site)
REFERENCE = {("encoder", "attn"): "encoder_attentions", ("decoder", "attn"): "decoder_attentions",
             ("decoder", "cross_attn"): "cross_attentions"}
#: decoder inputs: the start token, then these many tokens of the other sentence
DECODER_LENGTHS = (4, 2)


def _inputs(model, tokenizer, probe):
    """Encoder inputs (``input_ids`` rows or ``input_features``) and decoder id rows."""
    config = model.config
    start = probe.decoder_start()
    if getattr(model, "main_input_name", "input_ids") == "input_features":
        frames = 2 * int(getattr(config, "max_source_positions", 1500))
        rng = np.random.default_rng(0)
        features = rng.standard_normal((2, int(config.num_mel_bins), frames)).astype(np.float32)
        pool = list(range(3, 3 + 8))
        return None, features, [[start, *pool[:n - 1]] for n in DECODER_LENGTHS]
    if tokenizer is None:
        rows = [list(range(5, 17)), list(range(5, 10))]
    else:
        rows = [tokenizer(s)["input_ids"] for s in SENTENCES]
    decoder = [[start, *rows[1 - i][1:n]] for i, n in enumerate(DECODER_LENGTHS)]
    return rows, None, decoder


def check_encoder_decoder(model, tokenizer=None) -> CheckReport:
    """Facts and the self-check of an encoder-decoder (see the module docstring)."""
    from .encdec import EncoderDecoderProbe

    layers = encoder_decoder_layers(model)
    dtype = next(model.parameters()).dtype
    config = model.config
    facts = {"family": family_name(model), "model_type": config.model_type,
             "attention": config._attn_implementation,
             "encoder layers": len(layers.encoder), "decoder layers": len(layers.decoder),
             "heads": getattr(config, "num_heads", None) or getattr(config, "encoder_attention_heads", None),
             "sites": "encoder attn, decoder attn, decoder cross_attn",
             "keys": "encoder.blocks.{l}.attn.*, decoder.blocks.{l}.attn.*, "
                     "decoder.blocks.{l}.cross_attn.*"}
    report = CheckReport(facts, tolerance=TOLERANCE.get(dtype, 1e-4))
    with EncoderDecoderProbe(model, tokenizer, keys=["pattern", "v", "z"]) as probe:
        enc_rows, features, dec_rows = _inputs(model, tokenizer, probe)
        capture = probe.run_ids(enc_rows, dec_rows, input_features=features)
        device = next(model.parameters()).device
        inputs = {}
        if enc_rows is not None:
            pad_id = pad_id_of(tokenizer) if tokenizer is not None else probe.decoder_pad()
            inputs["input_ids"], inputs["attention_mask"] = pad(enc_rows, pad_id, device)
            n_enc = [len(r) for r in enc_rows]
        else:
            inputs["input_features"] = torch.as_tensor(features).to(device, dtype)
            n_enc = None
        inputs["decoder_input_ids"], inputs["decoder_attention_mask"] = pad(
            dec_rows, probe.decoder_pad(), device)
    reference = _eager(model, inputs)
    n_dec = [len(r) for r in dec_rows]
    for (stack, site), field in REFERENCE.items():
        attentions = getattr(reference, field)
        worst = {"pattern": 0.0, "rows": 0.0, "z": 0.0}
        for layer, ref in enumerate(attentions):
            for b, ex in enumerate(capture):
                pattern = torch.as_tensor(np.asarray(ex[names.key(layer, "pattern", stack=stack, site=site)]))
                n_q = n_dec[b] if stack == "decoder" else pattern.shape[-2]
                n_k = pattern.shape[-1]
                if n_enc is not None and stack == "encoder":
                    n_q = n_enc[b]
                want = ref[b, :, :n_q, :n_k].double()
                worst["pattern"] = max(worst["pattern"], _diff(pattern.double(), want))
                worst["rows"] = max(worst["rows"], _diff(pattern.double().sum(-1),
                                                         torch.ones(pattern.shape[:-1], dtype=torch.float64)))
                v = torch.as_tensor(np.asarray(ex[names.key(layer, "v", stack=stack, site=site)])).double()
                z = torch.as_tensor(np.asarray(ex[names.key(layer, "z", stack=stack, site=site)])).double()
                group = pattern.shape[0] // v.shape[0]
                worst["z"] = max(worst["z"], _diff(z, pattern.double() @ v.repeat_interleave(group, 0)))
        label = "cross" if site == "cross_attn" else stack
        for check, value in worst.items():
            report.diffs[f"{label} {check}"] = value
    return report


def _eager(model, inputs):
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(**inputs, output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(before)
