"""A batch counterfactual experiment over any pair file, with the Python API.

    python experiments/counterfactual_batch.py [PAIRS.jsonl]

Builds the pair run (resumable: rerun after an interruption and it continues), then works on
the stored run only: per-pair metrics for every layer and head, statistics per construction
kind, and a CSV with one row per kind x layer x head. Edit the config to change model, pairs,
metrics or grouping.
"""

import sys
from pathlib import Path

import numpy as np

from probe import AttentionProbe, load_model, open_run
from probe.pairs import load_pairs
from probe.stats import benjamini_hochberg, bootstrap_ci, paired_test
from probe.study import STUDY_COMPONENTS, capture_pairs, pair_tables, write_csv

# ---- config -------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent
MODEL = None                                  # None: the bundled all-MiniLM-L6-v2
PAIRS = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "data" / "negation_pairs.jsonl"
OUT = ROOT / "out" / "counterfactual_batch"
METRIC = "cue_attention_in"                   # compared with its positional baseline
GROUP_BY = "kind"                             # any pair field: kind, domain, ...
# -------------------------------------------------------------------------------------------


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    run_path = OUT / "run.h5"
    model, tokenizer = load_model(MODEL)
    with AttentionProbe(model, tokenizer, keys=STUDY_COMPONENTS) as probe:
        capture_pairs(probe, {"pairs": load_pairs(PAIRS)}, run_path, resume=True, progress=True).close()

    with open_run(run_path) as run:
        table = pair_tables(run)["pairs"]
    groups = np.array([str(info.get(GROUP_BY)) for info in table.info])
    values, baseline = table.metrics[METRIC], table.metrics[f"{METRIC}_baseline"]
    rows = []
    for group in sorted(set(groups)):
        pick = groups == group
        test = paired_test(values[pick], baseline[pick])
        low, high = bootstrap_ci(values[pick] - baseline[pick])
        q = benjamini_hochberg(test.pvalue)
        for li, layer in enumerate(table.layers):
            for head in range(values.shape[2]):
                rows.append({GROUP_BY: group, "layer": layer, "head": head, "n": int(test.n[li, head]),
                             "difference": test.mean_difference[li, head],
                             "ci_low": low[li, head], "ci_high": high[li, head],
                             "effect_size": test.effect_size[li, head], "p": test.pvalue[li, head],
                             "q": q[li, head], "test": test.method})
        best = np.unravel_index(np.nanargmax(np.abs(test.effect_size)), test.effect_size.shape)
        print(f"{GROUP_BY}={group:<14} n={int(pick.sum()):4d}  strongest head: layer "
              f"{table.layers[best[0]]} head {best[1]}, d={test.effect_size[best]:+.2f}, "
              f"{int((q <= 0.05).sum())} heads with q<=0.05")
    write_csv(OUT / f"{METRIC}_by_{GROUP_BY}.csv", rows, list(rows[0]))
    print(f"wrote {OUT / f'{METRIC}_by_{GROUP_BY}.csv'}")


if __name__ == "__main__":
    main()
