"""Negation study with the Python API, end to end. Copy this file and edit the config.

    python experiments/negation_study.py

Plans the study (cue, matched control, cluster of every pair), captures the original, the
negation and the control of every pair on the model, stores the run, compares each pair per
layer and head, tests over clusters per construction kind and writes tables, figures and a
summary to OUT. Then it prints the heads whose attention to the negation cue differs from
attention to the control's neutral word in the same place: the negation-selective heads.
"""

from pathlib import Path

from probe import AttentionProbe, load_model, open_run
from probe.design import plan_pairs
from probe.pairs import load_pairs
from probe.study import STUDY_COMPONENTS, capture_pairs
from probe.study_report import analyze

# ---- config -------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent
MODEL = None                                  # None: the bundled all-MiniLM-L6-v2; or a name/path
PAIRS = ROOT / "data" / "negation_pairs.jsonl"
CONTROLS = None                               # "field", "auto", "none"; None: field if the file has them
OUT = ROOT / "out" / "negation_study"
KINDS = None                                  # e.g. {"copula", "contraction"} to study a subset
BATCH_SIZE = 32
RESAMPLES = 1000
METRIC = "cue_attention_in"
# -------------------------------------------------------------------------------------------


def main() -> None:
    pairs = load_pairs(PAIRS)
    if KINDS:
        pairs = [p for p in pairs if p.kind in KINDS]
    plans = plan_pairs(pairs, controls=CONTROLS)
    OUT.mkdir(parents=True, exist_ok=True)
    run_path = OUT / "run.h5"

    model, tokenizer = load_model(MODEL)
    with AttentionProbe(model, tokenizer, keys=STUDY_COMPONENTS) as probe:
        # resume=True continues an interrupted capture and reuses a finished one
        capture_pairs(probe, plans, run_path, batch_size=BATCH_SIZE, resume=True, progress=True).close()

    with open_run(run_path) as run:  # from here on, no model is needed
        result = analyze(run, OUT, n_resamples=RESAMPLES, title="Negation study")

    selective = [r for r in result.stats if r["metric"] == METRIC and r["q"] < 0.05
                 and r["contrast"] == "negation_vs_control"]
    selective.sort(key=lambda r: -abs(r["effect_size"]))
    print(f"{len(pairs)} pairs; files in {OUT}")
    print(f"heads where {METRIC} differs between the cue and the control's word (q < 0.05):")
    for r in selective[:10]:
        print(f"  {r['kind']:<13} layer {r['layer']} head {r['head']:2d}: {r['estimate']:+.3f} "
              f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}], d_z={r['effect_size']:+.2f}, "
              f"q={r['q']:.1e}, {r['n_pairs']} pairs in {r['n_clusters']} clusters")
    if not selective:
        print("  none")


if __name__ == "__main__":
    main()
