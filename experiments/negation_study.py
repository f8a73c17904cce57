"""Negation study with the Python API, end to end. Copy this file and edit the config.

    python experiments/negation_study.py

Captures every negation pair (and the word-swap contrast pairs) on the model, stores the run,
compares each pair per layer and head, tests across pairs and writes tables, figures and a
summary to OUT. Then it prints the heads whose attention to the negation cue differs most
from attention at the same position in the affirmative sentence.
"""

from pathlib import Path

from probe import AttentionProbe, load_model, open_run
from probe.pairs import load_pairs
from probe.study import STUDY_COMPONENTS, analyze, capture_pairs

# ---- config -------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent
MODEL = None                                  # None: the bundled all-MiniLM-L6-v2; or a name/path
PAIRS = ROOT / "data" / "negation_pairs.jsonl"
BASELINE = ROOT / "data" / "contrast_pairs.jsonl"  # None for no contrast set
OUT = ROOT / "out" / "negation_study"
KINDS = None                                  # e.g. {"copula", "contraction"} to study a subset
BATCH_SIZE = 32
RESAMPLES = 1000
# -------------------------------------------------------------------------------------------


def main() -> None:
    pairs = load_pairs(PAIRS)
    if KINDS:
        pairs = [p for p in pairs if p.kind in KINDS]
    sets = {"pairs": pairs}
    if BASELINE:
        wanted = {p.id for p in pairs}
        sets["baseline"] = [p for p in load_pairs(BASELINE) if p.group in wanted]
    OUT.mkdir(parents=True, exist_ok=True)
    run_path = OUT / "run.h5"

    model, tokenizer = load_model(MODEL)
    with AttentionProbe(model, tokenizer, keys=STUDY_COMPONENTS) as probe:
        # resume=True continues an interrupted capture and reuses a finished one
        capture_pairs(probe, sets, run_path, batch_size=BATCH_SIZE, resume=True, progress=True).close()

    with open_run(run_path) as run:  # from here on, no model is needed
        result = analyze(run, OUT, n_resamples=RESAMPLES, title="Negation study",
                         baseline_set="baseline" if BASELINE else None)

    cue = [r for r in result.stats if r["metric"] == "cue_attention_in" and r["significant"]]
    cue.sort(key=lambda r: -abs(r["effect_size"]))
    print(f"{len(pairs)} pairs; files in {OUT}")
    print("heads whose attention to the cue differs most from the same position unnegated:")
    for r in cue[:8]:
        print(f"  layer {r['layer']} head {r['head']:2d}: cue {r['mean']:.3f} "
              f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] vs {r['baseline_mean']:.3f}, "
              f"d={r['effect_size']:+.2f}, q={r['q']:.1e}")


if __name__ == "__main__":
    main()
