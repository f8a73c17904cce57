"""`probe check-model`: what probe finds in a model, and a self-check against eager attention.

The first thing to run on a new model. It reports the family, attention implementation,
layers, heads, key/value heads, sliding-window and sink layout and the keys probe can capture,
then captures two sentences (padded into one batch) and compares every component with an
independent reference:

======================  ==================================================================
check                   reference
======================  ==================================================================
pattern                 the model's own eager ``output_attentions``
scores                  ``q k^T * scaling`` (soft-capped where the model caps) from captured q, k
rows                    ``pattern.sum(key) + sink`` against 1
z                       ``pattern @ v`` (grouped-query heads expanded)
value_norm              ``||v_j W_O^h||`` formed explicitly from W_O
output                  sum over heads and keys of ``alpha_hij v_j W_O^h`` plus the bias, against
                        the output projection's real output (read by a hook)
hidden                  the model's last hidden state under the probe against eager's
======================  ==================================================================

Each difference is a max abs diff divided by ``max(1, max |reference|)``, over real tokens, and
passes under the tolerance of the model's dtype (:data:`TOLERANCE`).

Imports torch, einops, :mod:`probe.architectures`, :mod:`probe.attention` and
:mod:`probe.names` (and, inside functions, :mod:`probe.capture`, :mod:`probe.check_encdec`,
:mod:`probe.inputs` and :mod:`probe.models`).

>>> from probe import load_model
>>> report = check_model(*load_model())
>>> report.passed, report.facts["family"], report.facts["layers"]
(True, 'BERT', 6)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import rearrange

from . import names
from .architectures import family_name
from .attention import repeat_kv

#: two sentences of different lengths, so the self-check also covers padding
SENTENCES = ("The committee never approved the budget for the northern schools.",
             "A robin is not a fish.")

#: relative tolerance of every check, by the dtype of the model's weights
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 5e-3,
             torch.bfloat16: 3e-2}


@dataclass
class CheckReport:
    """What :func:`check_model` found: ``facts`` about the model, ``diffs`` per check."""

    facts: dict
    diffs: dict[str, float] = field(default_factory=dict)
    tolerance: float = 1e-4

    @property
    def passed(self) -> bool:
        return all(d <= self.tolerance for d in self.diffs.values())

    def format(self) -> str:
        """The report as printed by ``probe check-model``."""
        width = max(map(len, self.facts))
        lines = [f"{k:<{width}}  {v}" for k, v in self.facts.items()]
        lines.append(f"self-check on {len(SENTENCES)} sentences against eager attention "
                     f"(max abs diff / max(1, max |reference|); tolerance {self.tolerance:g}):")
        for check, diff in self.diffs.items():
            lines.append(f"  {check:<11} max diff {diff:.3g}  "
                         f"{'ok' if diff <= self.tolerance else 'FAIL'}")
        lines.append("PASS" if self.passed else "FAIL")
        return "\n".join(lines)


def _layout(values) -> str:
    """Compact per-layer layout: ``"4 x sliding(4), then full"`` style runs."""
    runs = []
    for v in values:
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    return ", ".join(f"{n} x {v}" if n > 1 else v for v, n in runs)


def _diff(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double(), ref.double()
    if got.numel() == 0:
        return 0.0
    return float((got - ref).abs().max() / max(1.0, float(ref.abs().max())))


def check_model(model, tokenizer, sentences=SENTENCES) -> CheckReport:
    """Report what probe finds in ``model`` and compare its captures with independent references.

    The model is left as it was (attention implementation and hooks restored).
    """
    from .capture import AttentionProbe
    from .inputs import pad, pad_id_of

    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        from .check_encdec import check_encoder_decoder

        return check_encoder_decoder(model, tokenizer)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    probe = AttentionProbe(model, tokenizer, keys=names.COMPONENTS)  # sink too: zeros are checked
    layers = probe.layers
    rows = [tokenizer(s)["input_ids"] for s in sentences]
    ids, mask = pad(rows, pad_id_of(tokenizer), device)
    real = mask.bool()
    options = {"use_cache": False} if "use_cache" in probe.forward_options else {}

    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            eager = model(input_ids=ids, attention_mask=mask, output_attentions=True, **options)
    finally:
        model.set_attn_implementation(before)

    calls: dict[int, list] = {}
    hooks = [m.register_forward_hook(
        lambda mod, a, o: calls.setdefault(id(mod), []).append(o.detach()))
        for m in {id(layer.out_proj): layer.out_proj for layer in layers}.values()]
    try:
        with probe, torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, **options)
            capture = probe.last
    finally:
        for h in hooks:
            h.remove()
    facts_by_layer = probe.layer_facts

    first = capture[0]
    n_heads = first[names.key(0, "q")].shape[0]
    n_kv = first[names.key(0, "k")].shape[0]
    windows = [f"sliding({facts_by_layer[i]['sliding_window']})"
               if facts_by_layer[i]["sliding_window"] else "full" for i in range(len(layers))]
    facts = {
        "model": type(model).__name__,
        "model_type": model.config.model_type,
        "family": family_name(model),
        "attention": f"{before} (probe switches to its own eager backend while capturing)",
        "dtype": str(dtype).replace("torch.", ""),
        "layers": len(layers),
        "attention modules": f"{layers[0].name} ... {layers[-1].name}"
                             + ("  (one module shared by several layers)"
                                if len({id(x.module) for x in layers}) < len(layers) else ""),
        "output projection": f"{layers[0].out_name} ({type(layers[0].out_proj).__name__})",
        "heads": n_heads,
        "kv heads": n_kv,
        "d_head": first[names.key(0, "q")].shape[-1],
        "scaling": _layout([f"{facts_by_layer[i]['scaling']:.4g}" for i in range(len(layers))]),
        "soft-capping": _layout([str(facts_by_layer[i]["softcap"]) for i in range(len(layers))]),
        "windows": _layout(windows),
        "sinks": _layout(["yes" if facts_by_layer[i]["sink"] else "no"
                          for i in range(len(layers))]),
        "keys": f"blocks.{{0..{len(layers) - 1}}}.attn.{{{','.join(names.COMPONENTS)}}}",
    }

    diffs = {name: 0.0 for name in ("pattern", "scores", "rows", "z", "value_norm", "output",
                                    "hidden")}
    seen: dict[int, int] = {}
    for layer in layers:
        k_call = seen.get(id(layer.out_proj), 0)
        seen[id(layer.out_proj)] = k_call + 1
        projected = calls[id(layer.out_proj)][k_call]
        w = layer.output_weight(device).detach().double()
        b = layer.output_bias(device)
        b = None if b is None else b.detach()
        f = layer.index
        for row, ex in enumerate(capture):
            a, _ = _span(mask[row])

            def get(component, ex=ex):
                return torch.as_tensor(ex[names.key(layer.index, component)]).to(device)

            pattern, q, k, v = get("pattern"), get("q"), get("k"), get("v")
            n = pattern.shape[-1]
            ref = eager.attentions[layer.index][row, :, a:a + n, a:a + n]
            diffs["pattern"] = max(diffs["pattern"], _diff(pattern, ref))
            diffs["rows"] = max(diffs["rows"], _diff(pattern.double().sum(-1) + get("sink"),
                                                     torch.ones_like(get("sink"))))
            k_all, v_all = (repeat_kv(t.double()[None], n_heads)[0] for t in (k, v))
            logits = q.double() @ k_all.transpose(-1, -2) * facts_by_layer[f]["scaling"]
            cap = facts_by_layer[f]["softcap"]
            if cap is not None:
                logits = torch.tanh(logits / cap) * cap
            scores = get("scores").double()
            kept = ~torch.isneginf(scores)
            diffs["scores"] = max(diffs["scores"], _diff(scores[kept], logits[kept]))
            diffs["z"] = max(diffs["z"], _diff(get("z"), pattern.double() @ v_all))
            w_heads = rearrange(w, "d_model (head d_head) -> head d_head d_model", head=n_heads)
            fx = torch.einsum("hkd,hdm->hkm", v_all, w_heads)  # f_h(x_j) for every head and key
            diffs["value_norm"] = max(diffs["value_norm"],
                                      _diff(get("value_norm"), fx.norm(dim=-1)))
            rebuilt = torch.einsum("hqk,hkm->qm", pattern.double(), fx)
            if b is not None:
                rebuilt = rebuilt + b.double()
            diffs["output"] = max(diffs["output"], _diff(rebuilt, projected[row, a:a + n]))
    diffs["hidden"] = _diff(out.last_hidden_state[real], eager.last_hidden_state[real])
    return CheckReport(facts, diffs, TOLERANCE.get(dtype, 1e-4))


def _span(row_mask) -> tuple[int, int]:
    pos = torch.nonzero(row_mask).flatten()
    return int(pos[0]), int(pos[-1]) + 1


def add_check_parser(subparsers) -> None:
    """Add ``probe check-model NAME_OR_PATH`` to the CLI's subparsers."""
    cm = subparsers.add_parser(
        "check-model", help="what probe finds in a model, and a self-check of every captured "
        "component against the model's eager attention (exit code 0 on PASS, 1 on FAIL)")
    cm.add_argument("model", nargs="?", default=None,
                    help="hub name or local folder (config, weights, tokenizer); default: the "
                    "bundled MiniLM")
    cm.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    cm.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="dtype to load the model in")
    cm.set_defaults(func=cmd_check)


def cmd_check(args) -> int:
    """Load ``args.model``, print the report; 0 when every check passes, 1 otherwise."""
    from .models import load_model

    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    report = check_model(model, tokenizer)
    print(report.format())
    return 0 if report.passed else 1
