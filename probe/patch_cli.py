"""``probe patch``: causal head analysis of a pair file (added to :mod:`probe.cli`).

    probe patch --pairs FILE --out DIR [--model M] [--direction noising|denoising]
                [--component z|pattern|value] [--positions all|cue|aligned] [--per-pair]
                [--whole-layers] [--residual] [--study DIR --study-metric M] [--top K]

Everything is validated (pair file, heads, target tokens, the metric's head) before DIR is
touched; every file is written atomically and ``COMPLETE.json`` last.

Imports numpy and :mod:`probe.errors`; inside the command, transformers, :mod:`probe.models`,
:mod:`probe.pairs`, :mod:`probe.design`, :mod:`probe.readers`, :mod:`probe.outputs`,
:mod:`probe.plots`, :mod:`probe.stats` and the patching modules (:mod:`probe.patching`, :mod:`probe.patch_pairs`,
:mod:`probe.patch_attribution`, :mod:`probe.patch_report`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .errors import InputError


def add_patch_parser(subparsers):
    """Add the ``patch`` subcommand to an argparse subparsers object."""
    sp = subparsers.add_parser("patch", help="causal head analysis: patch every head from one side "
                               "of each pair into the other, test effects over clusters")
    sp.add_argument("--pairs", help="pair file (default: the bundled data/negation_pairs.jsonl)")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--model", default=None, help="hub name or local folder (default: bundled MiniLM)")
    sp.add_argument("--direction", choices=["noising", "denoising"], default="noising",
                    help="noising: the negated side patched into the original (default); "
                    "denoising: the original patched into the negated side")
    sp.add_argument("--component", choices=["z", "pattern", "value"], default="z",
                    help="z: head output; pattern: attention weights; value: v of a key/value head")
    sp.add_argument("--positions", default="all", help="all, aligned, cue, or one target position")
    sp.add_argument("--metric", choices=["embedding", "logit"], default="embedding",
                    help="embedding: cosine of mean-pooled last hidden states; logit: the pair's "
                    "target token (loads the model with its LM / masked-LM head)")
    sp.add_argument("--min-gap", type=float, default=None, help="smallest |gap| normalised by")
    sp.add_argument("--controls", choices=["auto", "field", "none"], default=None,
                    help="also patch each control and test negation minus control (default as "
                    "probe negation: field when the file has controls, else auto)")
    sp.add_argument("--per-pair", action="store_true", help="write patch_pairs.csv")
    sp.add_argument("--whole-layers", action="store_true", help="also patch all heads of each layer")
    sp.add_argument("--residual", action="store_true",
                    help="also patch each block's input (residual stream) one position at a time")
    sp.add_argument("--top", type=int, default=3, help="heads in the by-position figure (0: none)")
    sp.add_argument("--attribution", type=int, default=0, metavar="K",
                    help="screen: estimate every head by attribution patching (one backward "
                    "pass per batch), patch only the top K exactly, report the agreement")
    sp.add_argument("--study", help="a study folder (stats.csv) to join correlational effects from")
    sp.add_argument("--study-metric", default="attention_js_divergence")
    sp.add_argument("--limit", type=int, default=None, help="first N pairs only")
    sp.add_argument("--batch-rows", type=int, default=192, help="patched rows per forward")
    sp.add_argument("--resamples", type=int, default=1000)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--pooled", action="store_true", help="also report all kinds pooled")
    sp.add_argument("--device", default="cpu")
    sp.set_defaults(func=cmd_patch)
    return sp


def _positions(text: str):
    text = str(text)
    return int(text) if text.isdigit() else text


def load_for_metric(name, metric: str, device="cpu"):
    """``(model, tokenizer)``; for ``logit``, the model with its LM or masked-LM head (refused
    when the checkpoint has no trained head: a fresh random head would give meaningless logits)."""
    from .models import load_model, resolve_model

    if metric == "embedding":
        return load_model(name, device=device)
    import transformers as T

    path = resolve_model(name)
    config = T.AutoConfig.from_pretrained(path)
    cls = T.AutoModelForCausalLM if getattr(config, "is_decoder", False) or config.model_type in (
        "gpt2", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "opt", "gptj", "gemma2",
        "gemma3_text", "phi3", "olmo2", "mixtral") else T.AutoModelForMaskedLM
    try:
        model, info = cls.from_pretrained(path, output_loading_info=True)
    except (OSError, ValueError) as err:
        raise InputError(f"could not load {path!r} with a language-modelling head: {err}") from None
    if info.get("missing_keys"):
        raise InputError(f"{path!r} has no trained {cls.__name__[12:]} head (missing "
                         f"{', '.join(sorted(info['missing_keys'])[:3])}); --metric logit needs one. "
                         "Use --metric embedding")
    return model.to(device).eval(), T.AutoTokenizer.from_pretrained(path)


def cmd_patch(args) -> int:
    from . import plots
    from .design import plan_pairs
    from .outputs import begin_folder, finish_folder, write_csv, write_text
    from .pairs import Side, load_pairs
    from .patch_pairs import head_specs, plan_setups, sweep
    from .patch_report import (JOIN_COLUMNS, PAIR_COLUMNS, PATCH_COLUMNS, STATUS_COLUMNS, grid,
                               head_columns, heatmap, join_study, pair_rows, position_curves,
                               by_position_figure, read_study, statistics, status_rows)
    from .patch_attribution import screen
    from .patching import Patcher

    started = time.time()
    if args.pairs:
        pairs_path = Path(args.pairs)
    else:
        from .readers import bundled_path as bundled

        pairs_path = bundled("negation_pairs.jsonl")
    pairs = load_pairs(pairs_path)[: args.limit] if args.limit else load_pairs(pairs_path)
    plans = plan_pairs(pairs, controls=args.controls, seed=args.seed)
    study = read_study(args.study, args.study_metric) if args.study else None
    if args.batch_rows < 1:
        raise InputError(f"--batch-rows must be at least 1, got {args.batch_rows}")
    model, tokenizer = load_for_metric(args.model, args.metric, args.device)
    out = Path(args.out)
    with Patcher(model, tokenizer, metric=args.metric, min_gap=args.min_gap) as pt:
        positions = _positions(args.positions)
        setups = plan_setups(pt, plans, direction=args.direction, positions=positions)
        with_controls = any(p.control is not None for p in plans)
        controls = (plan_setups(pt, plans, direction=args.direction, positions=positions,
                                side=Side.CONTROL)
                    if with_controls else None)
        if all(s.status for s in setups):
            raise InputError(f"no pair of {pairs_path} can be patched: "
                             f"{setups[0].status} (first pair)")
        if args.attribution and args.component != "z":
            raise InputError("--attribution screens z patches only; use --component z")
        folder = begin_folder(out)
        files = []
        screened = None
        if args.attribution > 0:
            screened = screen(pt, setups, top=args.attribution, batch_rows=args.batch_rows)
            specs = [("z", layer, (head,)) for layer, head in screened["heads"]]
            files.append(folder / "patch_attribution.csv")
            write_csv(files[-1], _attribution_rows(screened), ["layer", "head", "attribution", "exact"])
        else:
            specs = head_specs(pt, args.component, whole_layers=args.whole_layers)
        result = sweep(pt, setups, specs, batch_rows=args.batch_rows)
        cols = head_columns(result)
        shape = (pt.n_layers, pt.n_kv_heads if args.component == 'value' else pt.n_heads)
        values = grid(result, cols, shape)
        rows, results = statistics(values, setups, pooled=args.pooled, n_resamples=args.resamples,
                                   seed=args.seed)
        files.append(folder / "patch.csv")
        write_csv(files[-1], rows, PATCH_COLUMNS)
        files.append(folder / "patch_status.csv")
        write_csv(files[-1], status_rows(result, tokenizer), STATUS_COLUMNS)
        if args.per_pair:
            files.append(folder / "patch_pairs.csv")
            write_csv(files[-1], pair_rows(result, cols), PAIR_COLUMNS)
        layer_cols = [k for k, s in enumerate(result.specs) if len(s[2]) > 1]
        if layer_cols:
            lv = result.effects[:, layer_cols][:, :, None]
            lrows, _ = statistics(lv, setups, pooled=args.pooled, n_resamples=args.resamples,
                                  seed=args.seed, head_label="all")
            files.append(folder / "patch_layers.csv")
            write_csv(files[-1], lrows, PATCH_COLUMNS)
        if controls is not None:
            cres = sweep(pt, controls, specs, batch_rows=args.batch_rows)
            diff = values - grid(cres, head_columns(cres), shape)
            crows, _ = statistics(diff, setups, pooled=args.pooled, n_resamples=args.resamples,
                                  seed=args.seed)
            files.append(folder / "patch_vs_control.csv")
            write_csv(files[-1], crows, PATCH_COLUMNS)
        figures = folder / "figures"
        figures.mkdir(exist_ok=True)
        title = (f"{args.direction}, {args.component} patched at {args.positions} positions: "
                 f"{result.metric} effect")
        files += [Path(p) for p in plots.save(heatmap(results, title), figures / "patch_heatmap")]
        if args.top > 0:
            est = np.nanmax(np.abs(np.stack([r.estimate for r, _ in results.values()])), axis=0)
            order = np.argsort(np.nan_to_num(-est, nan=0.0), axis=None)[: args.top]
            top = [np.unravel_index(k, est.shape) for k in order]
            tspecs = [(args.component, int(layer), (int(head),)) for layer, head in top]
            pres = sweep(pt, setups, tspecs, batch_rows=args.batch_rows, per_position=True)
            curves = position_curves(pres, [f"head {layer}.{head}" for _, layer, (head,) in tspecs])
            files += [Path(p) for p in plots.save(by_position_figure(curves, "top heads: " + title),
                                                  figures / "patch_by_position")]
        if args.residual:
            rspecs = [("resid", layer, (0,)) for layer in range(pt.n_layers)]
            rres = sweep(pt, setups, rspecs, batch_rows=args.batch_rows, per_position=True)
            curves = position_curves(rres, [f"layer {layer} input" for layer in range(pt.n_layers)])
            rrows = [{"layer": layer, "offset": int(o), "mean_effect": m}
                     for layer, (offs, mean) in enumerate(curves.values()) for o, m in zip(offs, mean)]
            files.append(folder / "patch_residual.csv")
            write_csv(files[-1], rrows, ["layer", "offset", "mean_effect"])
            files += [Path(p) for p in plots.save(by_position_figure(curves, "residual stream by position"),
                                                  figures / "patch_residual")]
        summary = _summary(args, result, rows, crows if controls is not None else None)
        if screened is not None:
            summary += (f"\nattribution screen: exact patch on the top {len(screened['heads'])} heads; "
                        f"Spearman of mean effects over them {screened['spearman']:.3f}, over every "
                        f"(pair, head) {screened['pair_spearman']:.3f}\n")
        if study is not None:
            joined, corr = join_study(rows, study)
            files.append(folder / "patch_vs_study.csv")
            write_csv(files[-1], joined, JOIN_COLUMNS)
            files.append(folder / "patch_study_correlation.csv")
            write_csv(files[-1], corr, ["kind", "n_heads", "spearman_rho", "p"])
            summary += "\n## Causal vs correlational (Spearman over heads)\n\n" + "\n".join(
                f"- {c['kind']}: rho = {c['spearman_rho']:.3f} over {c['n_heads']} heads (p = {c['p']:.3g})"
                for c in corr) + "\n"
        files.append(folder / "summary.md")
        write_text(files[-1], summary)
    finish_folder(folder, files, command="patch", direction=args.direction,
                  component=args.component, positions=args.positions, metric=result.metric,
                  seconds=round(time.time() - started, 1))
    print(summary)
    return 0


def _attribution_rows(screened) -> list[dict]:
    mean = np.nanmean(screened["attribution"], axis=0)
    exact = {hd: np.nanmean(screened["exact"][:, k]) for k, hd in enumerate(screened["heads"])}
    return [{"layer": layer, "head": head, "attribution": mean[layer, head],
             "exact": exact.get((layer, head), np.nan)}
            for layer in range(mean.shape[0]) for head in range(mean.shape[1])]


def _summary(args, result, rows, control_rows=None) -> str:
    n = len(result.setups)
    flagged, skipped = sum(map(result.flagged, range(n))), sum(map(result.skipped, range(n)))
    lines = [f"# probe patch: {args.direction}, component {args.component}, positions {args.positions}",
             "", f"metric: {result.metric}; {n - flagged - skipped} of {n} pairs used, "
             f"{flagged} flagged (gap below {args.min_gap or 'default'}), "
             f"{skipped} skipped (see patch_status.csv)", ""]
    lines += _significant(rows, "heads whose patch effect differs from 0 (q < 0.05; any edit of "
                          "the sentence can cause this)")
    if control_rows is not None:
        lines += ["", *_significant(control_rows, "heads whose effect on the pair differs from the same "
                                    "patch on its matched control (q < 0.05; patch_vs_control.csv)")]
    else:
        lines += ["", "no matched controls: the effects above are not tested against a control "
                  "edit (descriptive of the edit, not specific to negation)"]
    return "\n".join(lines) + "\n"


def _significant(rows, title) -> list[str]:
    from .stats import smallest_p

    sig = sorted((r for r in rows if r["q"] == r["q"] and r["q"] < 0.05), key=lambda r: -abs(r["estimate"]))
    lines = [f"{title}: {len(sig)}"]
    for r in sig[:10]:
        lines.append(f"- {r['kind']}: head {r['layer']}.{r['head']} effect {r['estimate']:.3f} "
                     f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}], q = {r['q']:.2g}")
    clusters = {}  # kinds where no head could reach q < 0.05: too few clusters for the test
    for r in rows:
        clusters[r["kind"]] = max(clusters.get(r["kind"], 0), int(r["n_clusters"]))
    for kind, n in sorted(clusters.items()):
        best = smallest_p(n)
        if not best < 0.05:
            lines.append(f"- {kind}: {n} cluster(s): " + ("not tested (a test needs at least 2)"
                         if np.isnan(best) else f"no head could reach q < 0.05 (p >= {best:.3g}); "
                         "no evidence of absence"))
    return lines
