"""A batch counterfactual experiment over any pair file, with the Python API.

    python experiments/counterfactual_batch.py [PAIRS.jsonl]

Builds the pair run with matched controls (resumable: rerun after an interruption and it
continues), then works on the stored run only: per-pair metrics for every layer and head, one
metric's difference from the control tested over clusters within each group of a pair field,
and a CSV with one row per group x layer x head. Edit the config to change model, pairs,
metric or grouping.
"""

import sys
from pathlib import Path

import numpy as np

from probe import AttentionProbe, load_model, open_run
from probe.design import plan_pairs
from probe.outputs import write_csv
from probe.pairs import load_pairs
from probe.stats import benjamini_hochberg, cluster_test
from probe.study import STUDY_COMPONENTS, capture_pairs, pair_tables

# ---- config -------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent
MODEL = None                                  # None: the bundled all-MiniLM-L6-v2
PAIRS = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "data" / "negation_pairs.jsonl"
OUT = ROOT / "out" / "counterfactual_batch"
METRIC = "attention_js_divergence"            # any name in probe.pair_metrics.METRICS
GROUP_BY = "domain"                           # any pair field: kind, domain, ...
# -------------------------------------------------------------------------------------------


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    run_path = OUT / "run.h5"
    plans = plan_pairs(load_pairs(PAIRS))
    model, tokenizer = load_model(MODEL)
    with AttentionProbe(model, tokenizer, keys=STUDY_COMPONENTS) as probe:
        capture_pairs(probe, plans, run_path, study="counterfactual", resume=True, progress=True).close()

    with open_run(run_path) as run:
        table = pair_tables(run)["pairs"]
    groups = np.array([str(p.pair.meta.get(GROUP_BY, p.pair.kind)) for p in table.plans])
    did = table.values[METRIC] - table.control[METRIC]  # difference in differences, per pair
    rows = []
    for group in sorted(set(groups[table.used])):
        pick = table.used & (groups == group)
        result = cluster_test(did[pick], table.clusters[pick])
        q = benjamini_hochberg(result.p)
        for li, layer in enumerate(table.layers):
            for head in range(did.shape[2]):
                rows.append({GROUP_BY: group, "layer": layer, "head": head,
                             "n_pairs": int(result.n_pairs[li, head]),
                             "n_clusters": int(result.n_clusters[li, head]),
                             "estimate": result.estimate[li, head], "ci_low": result.ci_low[li, head],
                             "ci_high": result.ci_high[li, head],
                             "effect_size": result.effect_size[li, head], "p": result.p[li, head],
                             "q": q[li, head], "test": result.test[li, head]})
        print(f"{GROUP_BY}={group:<12} {int(pick.sum()):4d} pairs in "
              f"{len(set(table.clusters[pick]))} clusters: {int((q < 0.05).sum())} heads differ "
              f"from the control (q < 0.05)")
    write_csv(OUT / f"{METRIC}_by_{GROUP_BY}.csv", rows, list(rows[0]))
    print(f"wrote {OUT / f'{METRIC}_by_{GROUP_BY}.csv'}")


if __name__ == "__main__":
    main()
