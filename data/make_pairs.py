"""Generate the bundled negation pairs from the templates and word lists in this file.

    python data/make_pairs.py            # writes data/negation_pairs.jsonl, prints the counts

Deterministic (fixed seed). Every pair is an affirmative sentence (``original``), its negation
by one minimal edit of a named construction (``counterfactual``) and a matched ``control``: the
original with a non-negating edit of the same type at the same place (a neutral adverb where
"not" is inserted, the uncontracted auxiliary plus an adverb for a contraction, another modal
for "cannot", another frequency adverb for "never", "one"/"many"/"several" for "no"), so that
counterfactual and control differ only by negation vs a neutral word. ``cluster`` names the
template row (one row of a word list below) the pair came from; pairs from one row are not
independent, and pairs that share an original always share a cluster.
"""

from __future__ import annotations

import json
import random
import re
import statistics
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261123
OUT = HERE.parent / "probe" / "data" / "negation_pairs.jsonl"  # package data; data/ links to it

# (domain, subject, copula predicate: adjective or "a"/"an" + noun)
COPULA = [
    ("animals", "the robin", "a bird"), ("animals", "the whale", "a mammal"),
    ("animals", "the old dog", "hungry"), ("animals", "this spider", "dangerous"),
    ("food", "the soup", "hot"), ("food", "the bread", "fresh"),
    ("food", "this apple", "ripe"), ("food", "the coffee", "strong"),
    ("weather", "the morning", "cold"), ("weather", "the wind", "strong"),
    ("weather", "the sky", "clear"), ("weather", "the winter", "mild"),
    ("science", "the solution", "acidic"), ("science", "the result", "significant"),
    ("science", "the metal", "magnetic"), ("science", "the theory", "correct"),
    ("geography", "the river", "deep"), ("geography", "the mountain", "high"),
    ("geography", "the island", "inhabited"), ("geography", "the desert", "dry"),
    ("people", "the teacher", "tired"), ("people", "my neighbour", "friendly"),
    ("people", "the pilot", "ready"), ("people", "the manager", "available"),
    ("technology", "the phone", "charged"), ("technology", "the server", "online"),
    ("technology", "the software", "stable"), ("technology", "the battery", "full"),
    ("sports", "the team", "ready"), ("sports", "the match", "finished"),
    ("sports", "the goalkeeper", "injured"), ("sports", "the stadium", "full"),
]

# plural subjects: (domain, subject, adjective)
PLURAL = [
    ("animals", "the birds", "noisy"), ("food", "the tomatoes", "sweet"),
    ("weather", "the nights", "warm"), ("science", "the samples", "pure"),
    ("geography", "the roads", "safe"), ("people", "the workers", "happy"),
    ("technology", "the cables", "loose"), ("sports", "the fans", "quiet"),
    ("animals", "the bees", "active"), ("food", "the noodles", "spicy"),
]

# (domain, subject, verb (base), verb (3rd person), object); eventive verbs, so that the
# perfect ("has VERBed") and "often VERBs" read naturally
VERBS = [
    ("animals", "the cat", "eat", "eats", "fish"), ("animals", "the horse", "pull", "pulls", "the cart"),
    ("food", "the baker", "sell", "sells", "bread"), ("food", "my sister", "drink", "drinks", "coffee"),
    ("weather", "the storm", "reach", "reaches", "the coast"), ("weather", "the sun", "warm", "warms", "the garden"),
    ("science", "the evidence", "support", "supports", "the hypothesis"),
    ("science", "the enzyme", "break", "breaks", "the bond"),
    ("geography", "the truck", "cross", "crosses", "the border"),
    ("geography", "the river", "flood", "floods", "the town"),
    ("people", "the student", "understand", "understands", "the question"),
    ("people", "the nurse", "remember", "remembers", "the patient"),
    ("technology", "the app", "store", "stores", "passwords"),
    ("technology", "the camera", "record", "records", "sound"),
    ("sports", "the coach", "praise", "praises", "the referee"),
    ("sports", "the runner", "win", "wins", "the race"),
]

# (domain, subject, verb phrase after a modal)
MODALS = [
    ("animals", "the parrot", "speak"), ("animals", "a penguin", "fly"),
    ("food", "the chef", "cook rice"), ("food", "the child", "eat peanuts"),
    ("weather", "the boat", "sail in fog"), ("weather", "the plane", "land in snow"),
    ("science", "the robot", "lift the box"), ("science", "the telescope", "see the comet"),
    ("geography", "the ferry", "reach the island"), ("geography", "the hikers", "cross the glacier"),
    ("people", "she", "finish the report"), ("people", "the guests", "stay for dinner"),
    ("technology", "the printer", "print in colour"), ("technology", "the drive", "hold the files"),
    ("sports", "the team", "win the cup"), ("sports", "the boxer", "fight tonight"),
    ("animals", "the puppy", "climb the stairs"), ("food", "the oven", "bake the pie"),
    ("weather", "the dam", "stop the flood"), ("science", "the drug", "cure the infection"),
    ("geography", "the train", "reach the capital"), ("people", "the judge", "accept the appeal"),
    ("technology", "the robot", "open the door"), ("sports", "the swimmer", "break the record"),
]
# (affirmative modal, its negation, kind)
MODAL_FORMS = [("can", "cannot", "modal"), ("can", "can't", "contraction"), ("will", "will not", "modal"),
               ("should", "should not", "modal"), ("could", "could not", "modal"),
               ("would", "wouldn't", "contraction"), ("must", "must not", "modal")]

# (domain, countable thing, place with its preposition)
THERE_IS = [
    ("animals", "bird", "in the cage"), ("animals", "dog", "in the yard"),
    ("food", "cookie", "in the jar"), ("food", "egg", "in the fridge"),
    ("weather", "cloud", "in the sky"), ("weather", "puddle", "on the path"),
    ("science", "leak", "in the chamber"), ("science", "error", "in the data"),
    ("geography", "bridge", "in the village"), ("geography", "lake", "in the park"),
    ("people", "doctor", "in the building"), ("people", "guard", "at the gate"),
    ("technology", "camera", "in the tunnel"), ("technology", "virus", "in the file"),
    ("sports", "referee", "on the field"), ("sports", "ball", "in the bag"),
]

# (domain, subject, frequency verb phrase (3rd person))
ALWAYS = [
    ("animals", "the owl", "hunts at night"), ("food", "the cafe", "serves breakfast"),
    ("weather", "the island", "gets heavy rain"), ("science", "the sensor", "detects the gas"),
    ("geography", "the path", "leads to the lake"), ("people", "my uncle", "arrives early"),
    ("technology", "the laptop", "crashes at startup"), ("sports", "the keeper", "saves penalties"),
]

# (domain, subject, decided-type verb (past), infinitive phrase)
INFINITIVE = [
    ("people", "she", "decided", "sign the contract"), ("people", "the mayor", "promised", "raise taxes"),
    ("sports", "the player", "chose", "join the club"), ("technology", "the company", "agreed", "update the app"),
    ("science", "the lab", "planned", "repeat the test"), ("food", "the chef", "decided", "add salt"),
]

FAMILIES = [("copula", COPULA), ("plural", PLURAL), ("verbs", VERBS), ("modals", MODALS),
            ("there-is", THERE_IS), ("always", ALWAYS), ("infinitive", INFINITIVE)]

NUMBERS = ["two", "three", "four", "five", "six", "seven"]
FREQUENCY = ["usually", "often", "sometimes", "always"]

# Neutral adverbs put where "not" is, restricted per construction to those that read well.
ADVERBS = ("really", "also", "still", "surely")
ADVERBS_FOR = {
    "be": ADVERBS,                        # is/was/are/were really|also|still|surely ADJ
    "seems": ("really",),                 # seems really ADJ
    "do": ("really", "also"),             # does/did really VERB
    "has": ("really", "also", "surely"),  # has really VERBed
    "modal": ADVERBS,                     # will/should/could/must/can/would really VERB
    "to": ("also",),                      # decided also to VERB
}
MODAL_SWAPS = ("could", "may", "might")   # "cannot" replaces "can": another modal in its slot
MANY = ("many", "several")                # "no" replacing a number

NEGATION = {"not", "no", "never", "none", "nobody", "nothing", "nowhere", "neither", "nor",
            "without", "cannot"}


def cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _participle(verb: str) -> str:
    irregular = {"eat": "eaten", "drink": "drunk", "sell": "sold", "break": "broken", "win": "won",
                 "understand": "understood"}
    if verb in irregular:
        return irregular[verb]
    return verb + ("d" if verb.endswith("e") else "ed")


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s")


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def pairs(rng: random.Random):
    """Yield (cluster, kind, domain, original, counterfactual, control, target) for every pair."""

    def adverb(slot):
        return rng.choice(ADVERBS_FOR[slot])

    def other(options, *exclude):
        return rng.choice([o for o in options if o not in exclude])

    for i, (domain, subj, pred) in enumerate(COPULA):
        c, s = f"copula-{i:02d}", cap(subj)
        for aux, contr in (("is", "isn't"), ("was", "wasn't")):
            original = f"{s} {aux} {pred}."
            yield c, "copula", domain, original, f"{s} {aux} not {pred}.", f"{s} {aux} {adverb('be')} {pred}.", "not"
            yield c, "contraction", domain, original, f"{s} {contr} {pred}.", f"{s} {aux} {adverb('be')} {pred}.", contr
        if not pred.startswith(("a ", "an ")):  # "seems" takes an adjective, not a noun phrase
            yield (c, "not-adjective", domain, f"{s} seems {pred}.", f"{s} seems not {pred}.",
                   f"{s} seems {adverb('seems')} {pred}.", "not")
    for i, (domain, subj, adj) in enumerate(PLURAL):
        c, s = f"plural-{i:02d}", cap(subj)
        for aux, contr in (("are", "aren't"), ("were", "weren't")):
            original = f"{s} {aux} {adj}."
            yield c, "copula", domain, original, f"{s} {aux} not {adj}.", f"{s} {aux} {adverb('be')} {adj}.", "not"
            yield c, "contraction", domain, original, f"{s} {contr} {adj}.", f"{s} {aux} {adverb('be')} {adj}.", contr
    for i, (domain, subj, base, third, obj) in enumerate(VERBS):
        c, s, part = f"verbs-{i:02d}", cap(subj), _participle(base)
        original = f"{s} {third} {obj}."
        yield c, "do-support", domain, original, f"{s} does not {base} {obj}.", f"{s} does {adverb('do')} {base} {obj}.", "not"
        yield c, "contraction", domain, original, f"{s} doesn't {base} {obj}.", f"{s} does {adverb('do')} {base} {obj}.", "doesn't"
        yield (c, "do-support", domain, f"{s} did {base} {obj}.", f"{s} did not {base} {obj}.",
               f"{s} did {adverb('do')} {base} {obj}.", "not")
        yield (c, "auxiliary", domain, f"{s} has {part} {obj}.", f"{s} has not {part} {obj}.",
               f"{s} has {adverb('has')} {part} {obj}.", "not")
        yield (c, "never", domain, f"{s} often {third} {obj}.", f"{s} never {third} {obj}.",
               f"{s} {other(FREQUENCY, 'often')} {third} {obj}.", "never")
    for i, (domain, subj, vp) in enumerate(MODALS):
        c, s = f"modals-{i:02d}", cap(subj)
        for pos, neg, kind in MODAL_FORMS:
            if neg == "cannot":
                control = f"{s} {rng.choice(MODAL_SWAPS)} {vp}."
            else:
                control = f"{s} {pos} {adverb('modal')} {vp}."
            yield c, kind, domain, f"{s} {pos} {vp}.", f"{s} {neg} {vp}.", control, neg.split()[-1]
    for i, (domain, thing, place) in enumerate(THERE_IS):
        c, things = f"there-is-{i:02d}", _plural(thing)
        yield (c, "no", domain, f"There is {_article(thing)} {thing} {place}.", f"There is no {thing} {place}.",
               f"There is one {thing} {place}.", "no")
        number = NUMBERS[len(thing) % len(NUMBERS)]
        yield (c, "no", domain, f"We found {number} {things} {place}.", f"We found no {things} {place}.",
               f"We found {rng.choice(MANY)} {things} {place}.", "no")
    for i, (domain, subj, vp) in enumerate(ALWAYS):
        c, s = f"always-{i:02d}", cap(subj)
        for freq in ("always", "sometimes"):
            yield (c, "never", domain, f"{s} {freq} {vp}.", f"{s} never {vp}.",
                   f"{s} {other(FREQUENCY, freq)} {vp}.", "never")
    for i, (domain, subj, verb, inf) in enumerate(INFINITIVE):
        c, s = f"infinitive-{i:02d}", cap(subj)
        yield (c, "not-verb", domain, f"{s} {verb} to {inf}.", f"{s} {verb} not to {inf}.",
               f"{s} {verb} {adverb('to')} to {inf}.", "not")
        yield (c, "modal", domain, f"{s} will {inf}.", f"{s} will not {inf}.",
               f"{s} will {adverb('modal')} {inf}.", "not")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def _is_negated(text: str) -> bool:
    return any(w in NEGATION or w.endswith("n't") for w in _words(text))


def build() -> list[dict]:
    rng = random.Random(SEED)
    rows, seen, cluster_of = [], set(), {}
    for cluster, kind, domain, original, counterfactual, control, target in pairs(rng):
        if (original, counterfactual) in seen:
            continue
        seen.add((original, counterfactual))
        assert cluster_of.setdefault(original, cluster) == cluster, (original, cluster, cluster_of[original])
        assert len({original, counterfactual, control}) == 3, (original, counterfactual, control)
        assert not _is_negated(original) and not _is_negated(control), (original, control)
        assert _is_negated(counterfactual) and target in _words(counterfactual), (counterfactual, target)
        rows.append({"id": f"neg-{len(rows):04d}", "original": original, "counterfactual": counterfactual,
                     "control": control, "kind": kind, "cluster": cluster, "target": target,
                     "domain": domain})
    assert len({r["id"] for r in rows}) == len(rows)
    return rows


def report(rows: list[dict]) -> None:
    """Print the counts that data/README.md quotes."""
    print(f"{OUT.name}: {len(rows)} pairs, {len({r['original'] for r in rows})} distinct originals")
    print("\nper kind (kind | pairs | example original / counterfactual / control):")
    kinds = Counter(r["kind"] for r in rows)
    for kind, n in kinds.most_common():
        ex = next(r for r in rows if r["kind"] == kind)
        print(f"  {kind} | {n} | {ex['original']} / {ex['counterfactual']} / {ex['control']}")
    print("\nper template family (family | rows (clusters) | pairs):")
    per_cluster = Counter(r["cluster"] for r in rows)
    for family, table in FAMILIES:
        n = sum(v for k, v in per_cluster.items() if k.rsplit("-", 1)[0] == family)
        print(f"  {family} | {len(table)} | {n}")
    sizes = sorted(per_cluster.values())
    print(f"\nclusters: {len(sizes)}; pairs per cluster: min {sizes[0]}, "
          f"median {statistics.median(sizes):g}, max {sizes[-1]}")
    print("  cluster sizes (pairs: clusters):", dict(sorted(Counter(sizes).items())))
    lengths = [len(r[k].split()) for r in rows for k in ("original", "counterfactual", "control")]
    print(f"words per sentence: {min(lengths)}-{max(lengths)}")
    print("\nper domain:", dict(Counter(r["domain"] for r in rows).most_common()))
    print("per target:", dict(Counter(r["target"] for r in rows).most_common()))


def main() -> None:
    rows = build()
    with open(OUT, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    report(rows)


if __name__ == "__main__":
    main()
