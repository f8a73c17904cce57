"""Cue detection accuracy on the hand-written test set, against the token-lexicon baseline.

Exact match of (cue text, class) per expected class and overall on
``tests/data/cue_pairs.jsonl``. The baseline, measured in the same run, is the token lexicon
``probe.align`` used before this module (:data:`BASELINE_LEXICON` and words ending in n't)
applied to the same word-level diff,
counterfactual side first: it gets the text only, so it is scored on the text alone (and
:func:`probe.cues.detect_cue` is scored on the text alone beside it). If
``data/negation_pairs.jsonl`` exists, also prints the share of its pairs whose detected cue
equals the row's ``target`` (lower-cased), and how many got a control.

    python benchmarks/cue_accuracy.py
"""

from __future__ import annotations

import collections
import difflib
import json
import re
from pathlib import Path

from probe.cues import build_control, detect_cue

# probe.align's NEGATION_CUES as of commit 14e3cba (the detection this module replaces)
BASELINE_LEXICON = frozenset({"not", "no", "never", "cannot", "nobody", "nothing", "none", "neither",
                              "nor", "nowhere", "without", "n't", "'t"})

ROOT = Path(__file__).resolve().parent.parent
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|[^\w\s]|_")


def baseline(original: str, counterfactual: str) -> str:
    """The align.py lexicon on the differing words, counterfactual side first."""
    ow = [m.group() for m in _WORD.finditer(original)]
    cw = [m.group() for m in _WORD.finditer(counterfactual)]
    low = lambda ws: [w.lower().replace("’", "'") for w in ws]  # noqa: E731
    sm = difflib.SequenceMatcher(None, low(ow), low(cw), autojunk=False)
    c_diff = [cw[j] for t, _, _, j1, j2 in sm.get_opcodes() if t != "equal" for j in range(j1, j2)]
    o_diff = [ow[i] for t, i1, i2, _, _ in sm.get_opcodes() if t != "equal" for i in range(i1, i2)]
    for words in (c_diff, o_diff):
        hits = [w for w in words if w.lower() in BASELINE_LEXICON or w.lower().replace("’", "'").endswith("n't")]
        if hits:
            return " ".join(hits)
    return ""


def main() -> None:
    rows = [json.loads(line) for line in open(ROOT / "tests/data/cue_pairs.jsonl") if line.strip()]
    per = collections.defaultdict(lambda: [0, 0, 0, 0])  # n, exact (text, cls), text, baseline text
    for r in rows:
        cue = detect_cue(r["original"], r["counterfactual"])
        for group in (r["cue_class"] or "near-miss", "overall"):
            s = per[group]
            s[0] += 1
            s[1] += (cue.text, cue.cls or "") == (r["cue"], r["cue_class"])
            s[2] += cue.text == r["cue"]
            s[3] += baseline(r["original"], r["counterfactual"]) == r["cue"]
        if (cue.text, cue.cls or "") != (r["cue"], r["cue_class"]):
            print(f"  miss {r['id']}: expected {r['cue']!r}/{r['cue_class']!r}, got {cue.text!r}/{cue.cls!r}"
                  f"  ({r['note']})")
    print(f"\n{'class':<12} {'n':>4} {'exact':>7} {'text':>7} {'baseline':>9} {'ratio':>6}")
    for group, (n, exact, text, base) in sorted(per.items(), key=lambda kv: kv[0] == "overall"):
        ratio = f"{text / base:.2f}" if base else "inf"
        print(f"{group:<12} {n:>4} {exact / n:>7.3f} {text / n:>7.3f} {base / n:>9.3f} {ratio:>6}")

    pairs = ROOT / "data/negation_pairs.jsonl"
    if pairs.exists():
        rows = [json.loads(line) for line in open(pairs) if line.strip()]
        hit = sum(detect_cue(r["original"], r["counterfactual"]).text.lower() == r["target"].lower()
                  for r in rows)
        base = sum(baseline(r["original"], r["counterfactual"]).lower() == r["target"].lower() for r in rows)
        built = sum(build_control(r["original"], r["counterfactual"],
                                  detect_cue(r["original"], r["counterfactual"]), key=r["id"]).text is not None
                    for r in rows)
        print(f"\n{pairs.name}: cue == target in {hit}/{len(rows)} = {hit / len(rows):.3f} "
              f"(baseline {base / len(rows):.3f}); controls built {built}/{len(rows)}")


if __name__ == "__main__":
    main()
