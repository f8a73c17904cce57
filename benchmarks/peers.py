"""Capture cost of probe against its peers on the bundled MiniLM, in one process, round-robin.

Every condition runs the same right-padded, length-sorted batches (input_ids and
attention_mask built once), in the same round, so the machine's load falls on all alike:

  plain sdpa          the model's own forward, nothing captured (the baseline)
  eager + oa          eager attention with output_attentions=True
  hooks               hand-written forward hooks (eager): q, k, v projections and the
                      self-attention module's (z, pattern) outputs, references kept
  nnsight             nnsight's trace saving the same tensors (skipped if not installed)
  TL bridge           TransformerLens' TransformerBridge run_with_cache on hook_q, hook_k,
                      hook_v, hook_pattern, hook_z (skipped if not installed)
  probe {pattern}, probe {q,k,v,pattern,z}, probe default keys

Equal work is checked first: every pattern a condition returns equals eager's
output_attentions within 1e-6 on real tokens (padded query rows and key columns excluded),
or the condition is reported as failing the check. Prints sentences/s (median over rounds)
and the time ratio to the plain forward and to eager + output_attentions.

    python benchmarks/peers.py [--n 256] [--batch-size 32] [--rounds 5] [--words 10-25]

The peers are an optional extra: pip install -e .[peers] (nnsight, transformer-lens).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sentences import sentences  # noqa: E402

from probe import AttentionProbe, load_model  # noqa: E402
from probe.inputs import batches_by_length, encode, pad  # noqa: E402

FIVE = ["q", "k", "v", "pattern", "z"]


def _real(mask_row):
    return np.flatnonzero(mask_row)


def check_patterns(name, got, reference, masks, tol=1e-6):
    """Max |difference| of `got` against eager's patterns on real tokens, per batch."""
    worst = 0.0
    for pats, refs, mask in zip(got, reference, masks):
        for layer, (a, b) in enumerate(zip(pats, refs)):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            for row in range(mask.shape[0]):
                keep = _real(mask[row])
                d = np.abs(a[row][:, keep][:, :, keep] - b[row][:, keep][:, :, keep]).max()
                worst = max(worst, float(d))
    return worst, worst <= tol


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--words", default="10-25", help="sentence length range in words")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer = load_model()
    model.eval()
    lo, hi = (int(x) for x in args.words.split("-"))
    texts = sentences(args.n, seed=5, min_words=lo, max_words=hi)
    enc = encode(tokenizer, texts, max_length=512)
    batches = [pad([enc.ids[i] for i in rows], tokenizer.pad_token_id, "cpu")
               for rows in batches_by_length([len(r) for r in enc.ids], args.batch_size)]
    masks = [m.numpy().astype(bool) for _, m in batches]
    layers = model.encoder.layer
    notes = []

    def forward(ids, mask, **extra):
        with torch.inference_mode():
            return model(input_ids=ids, attention_mask=mask, **extra)

    def eager_mode():
        model.set_attn_implementation("eager")

    def sdpa_mode():
        model.set_attn_implementation("sdpa")

    # --- conditions: each returns, per batch, the list of per-layer patterns (for the check)
    def plain():
        sdpa_mode()
        for ids, mask in batches:
            forward(ids, mask)
        return None

    def eager_oa():
        eager_mode()
        out = [forward(ids, mask, output_attentions=True).attentions for ids, mask in batches]
        sdpa_mode()
        return [[a.numpy() for a in atts] for atts in out]

    def hooks():
        eager_mode()
        got, handles = {}, []
        heads = model.config.num_attention_heads

        def keep(name):
            def hook(module, inputs, output):
                if isinstance(output, tuple):  # self-attention: (z, pattern)
                    got[name + ".z"], got[name + ".pattern"] = output[0].detach(), output[1].detach()
                else:  # a projection: [batch, token, head * d_head] -> [batch, head, token, d_head]
                    b, t, _ = output.shape
                    got[name] = output.detach().view(b, t, heads, -1).transpose(1, 2)
            return hook

        for i, layer in enumerate(layers):
            sa = layer.attention.self
            for proj in ("query", "key", "value"):
                handles.append(getattr(sa, proj).register_forward_hook(keep(f"{i}.{proj}")))
            handles.append(sa.register_forward_hook(keep(str(i))))
        out = []
        try:
            for ids, mask in batches:
                got.clear()
                forward(ids, mask)
                out.append([got[f"{i}.pattern"].numpy() for i in range(len(layers))])
        finally:
            for h in handles:
                h.remove()
            sdpa_mode()
        return out

    def probe_with(keys):
        def run():
            out = []
            with AttentionProbe(model, tokenizer, keys=keys) as p:
                for ids, mask in batches:
                    forward(ids, mask)
                    batch = p.captures.pop().batch
                    out.append([batch.arrays[f"blocks.{i}.attn.pattern"] for i in range(len(layers))]
                               if "pattern" in (keys or ["pattern"]) else None)
            return out
        return run

    conditions = {"plain sdpa": plain, "eager + output_attentions": eager_oa, "hand-written hooks": hooks}

    try:
        import nnsight

        traced = nnsight.NNsight(model)

        def nnsight_run():
            eager_mode()
            out = []
            try:
                for ids, mask in batches:
                    saved = []
                    with torch.inference_mode(), traced.trace(input_ids=ids, attention_mask=mask):
                        for layer in traced.encoder.layer:
                            sa = layer.attention.self
                            saved.append((sa.query.output.save(), sa.key.output.save(),
                                          sa.value.output.save(), sa.output.save()))
                    out.append([s[3][1].numpy() for s in saved])
            finally:
                sdpa_mode()
            return out

        conditions[f"nnsight {nnsight.__version__}"] = nnsight_run
    except ImportError:
        notes.append("nnsight: not installed, skipped (pip install -e .[peers])")

    try:
        from importlib.metadata import version

        import transformer_lens as tl

        # the bridge maps BERT only as BertForMaskedLM: it loads its own copy from the model
        # folder, with an MLM head (randomly initialised here; its cost is part of its time)
        bridge = tl.TransformerBridge.boot_transformers(
            model.config._name_or_path, tokenizer=tokenizer, device="cpu")
        notes.append("TransformerLens bridge: BERT is mapped only as BertForMaskedLM, so its time "
                     "includes an MLM head (vocabulary projection) the other conditions do not run")
        wanted = ("hook_q", "hook_k", "hook_v", "hook_pattern", "hook_z")

        def bridge_run():
            out = []
            for ids, mask in batches:
                with torch.inference_mode():
                    _, cache = bridge.run_with_cache(
                        ids, attention_mask=mask,
                        names_filter=lambda n: n.startswith("blocks.") and n.count(".") == 3
                        and n.endswith(wanted))
                out.append([cache[f"blocks.{i}.attn.hook_pattern"].numpy() for i in range(len(layers))])
            return out

        conditions[f"TransformerLens {version('transformer-lens')} bridge"] = bridge_run
    except ImportError:
        notes.append("TransformerLens: not installed, skipped (pip install -e .[peers])")

    conditions["probe {pattern}"] = probe_with(["pattern"])
    conditions["probe {q,k,v,pattern,z}"] = probe_with(FIVE)
    conditions["probe default keys"] = probe_with(None)

    # --- equal work: the warm-up pass doubles as the check
    reference = eager_oa()
    checks = {}
    for name, fn in conditions.items():
        got = fn()
        checks[name] = "-" if got is None else "{:.1e} {}".format(
            *check_patterns(name, got, reference, masks))
    times = {name: [] for name in conditions}
    for _ in range(args.rounds):
        for name, fn in conditions.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    base, eager = med["plain sdpa"], med["eager + output_attentions"]
    widths = [m.shape[1] for m in masks]
    print(f"MiniLM, {args.n} sentences of {args.words} words ({np.mean([len(x) for x in enc.ids]):.1f} "
          f"tokens on average, padded widths {min(widths)}-{max(widths)}), batch {args.batch_size}, "
          f"fp32, {args.rounds} round-robin rounds, torch threads {torch.get_num_threads()}")
    print(f"| {'condition':<34} | sentences/s | time vs plain sdpa | time vs eager + oa | "
          "pattern vs eager (max abs diff, within 1e-6) |")
    print(f"|{'-' * 36}|-------------|--------------------|--------------------|"
          "----------------------------------------------|")
    for name in conditions:
        print(f"| {name:<34} | {args.n / med[name]:11.1f} | {med[name] / base:18.3f} | "
              f"{med[name] / eager:18.3f} | {checks[name]:<44} |")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
