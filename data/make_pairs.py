"""Generate the bundled pair sets from the templates and word lists in this file.

    python data/make_pairs.py            # writes data/negation_pairs.jsonl, data/contrast_pairs.jsonl

Deterministic (fixed seed). Every negation pair is an affirmative sentence and its negation
by one minimal edit of a named construction; every contrast pair takes the original of a
negation pair and swaps one content word (a noun or a number), with ``group`` naming the
negation pair it shares its original with, so the two edits can be compared pair by pair.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261123

# (domain, subject, copula adjective, swap noun for contrast)
COPULA = [
    ("animals", "the robin", "a bird", "the sparrow"), ("animals", "the whale", "a mammal", "the dolphin"),
    ("animals", "the old dog", "hungry", "the old cat"), ("animals", "this spider", "dangerous", "this snake"),
    ("food", "the soup", "hot", "the tea"), ("food", "the bread", "fresh", "the cake"),
    ("food", "this apple", "ripe", "this pear"), ("food", "the coffee", "strong", "the juice"),
    ("weather", "the morning", "cold", "the evening"), ("weather", "the wind", "strong", "the rain"),
    ("weather", "the sky", "clear", "the lake"), ("weather", "the winter", "mild", "the summer"),
    ("science", "the solution", "acidic", "the sample"), ("science", "the result", "significant", "the effect"),
    ("science", "the metal", "magnetic", "the crystal"), ("science", "the theory", "correct", "the model"),
    ("geography", "the river", "deep", "the canal"), ("geography", "the mountain", "high", "the hill"),
    ("geography", "the island", "inhabited", "the valley"), ("geography", "the desert", "dry", "the plain"),
    ("people", "the teacher", "tired", "the doctor"), ("people", "my neighbour", "friendly", "my cousin"),
    ("people", "the pilot", "ready", "the driver"), ("people", "the manager", "available", "the lawyer"),
    ("technology", "the phone", "charged", "the laptop"), ("technology", "the server", "online", "the printer"),
    ("technology", "the software", "stable", "the website"), ("technology", "the battery", "full", "the tank"),
    ("sports", "the team", "ready", "the crowd"), ("sports", "the match", "finished", "the race"),
    ("sports", "the goalkeeper", "injured", "the striker"), ("sports", "the stadium", "full", "the arena"),
]

# plural subjects: (domain, subject, adjective, swap noun)
PLURAL = [
    ("animals", "the birds", "noisy", "the frogs"), ("food", "the tomatoes", "sweet", "the grapes"),
    ("weather", "the nights", "warm", "the days"), ("science", "the samples", "pure", "the cells"),
    ("geography", "the roads", "safe", "the bridges"), ("people", "the workers", "happy", "the voters"),
    ("technology", "the cables", "loose", "the screws"), ("sports", "the fans", "quiet", "the players"),
    ("animals", "the bees", "active", "the ants"), ("food", "the noodles", "spicy", "the beans"),
]

# (domain, subject, verb (base), verb (3rd person), object, swap noun)
VERBS = [
    ("animals", "the cat", "eat", "eats", "fish", "the fox"), ("animals", "the horse", "like", "likes", "apples", "the pony"),
    ("food", "the baker", "sell", "sells", "bread", "the grocer"), ("food", "my sister", "drink", "drinks", "coffee", "my brother"),
    ("weather", "the storm", "reach", "reaches", "the coast", "the flood"), ("weather", "the sun", "warm", "warms", "the garden", "the lamp"),
    ("science", "the experiment", "support", "supports", "the hypothesis", "the survey"),
    ("science", "the enzyme", "break", "breaks", "the bond", "the acid"),
    ("geography", "the road", "cross", "crosses", "the border", "the railway"),
    ("geography", "the river", "flood", "floods", "the town", "the lake"),
    ("people", "the student", "understand", "understands", "the question", "the teacher"),
    ("people", "the nurse", "remember", "remembers", "the patient", "the doctor"),
    ("technology", "the app", "store", "stores", "passwords", "the browser"),
    ("technology", "the camera", "record", "records", "sound", "the microphone"),
    ("sports", "the coach", "trust", "trusts", "the referee", "the captain"),
    ("sports", "the runner", "win", "wins", "the race", "the swimmer"),
]

# (domain, subject, modal verb phrase, swap noun)
MODALS = [
    ("animals", "the parrot", "speak", "the crow"), ("animals", "a penguin", "fly", "a chicken"),
    ("food", "the chef", "cook rice", "the waiter"), ("food", "the child", "eat peanuts", "the adult"),
    ("weather", "the boat", "sail in fog", "the ship"), ("weather", "the plane", "land in snow", "the helicopter"),
    ("science", "the robot", "lift the box", "the crane"), ("science", "the telescope", "see the comet", "the satellite"),
    ("geography", "the ferry", "reach the island", "the bus"), ("geography", "the hikers", "cross the glacier", "the tourists"),
    ("people", "she", "finish the report", "he"), ("people", "the guests", "stay for dinner", "the children"),
    ("technology", "the printer", "print in colour", "the scanner"), ("technology", "the drive", "hold the files", "the disk"),
    ("sports", "the team", "win the cup", "the club"), ("sports", "the boxer", "fight tonight", "the wrestler"),
    ("animals", "the puppy", "climb the stairs", "the kitten"), ("food", "the oven", "bake the pie", "the stove"),
    ("weather", "the dam", "stop the flood", "the wall"), ("science", "the drug", "cure the infection", "the vaccine"),
    ("geography", "the train", "reach the capital", "the coach"), ("people", "the judge", "accept the appeal", "the jury"),
    ("technology", "the robot", "open the door", "the drone"), ("sports", "the swimmer", "break the record", "the skier"),
]
MODAL_FORMS = [("can", "cannot", "modal"), ("can", "can't", "contraction"), ("will", "will not", "modal"),
               ("should", "should not", "modal"), ("could", "could not", "modal"),
               ("would", "wouldn't", "contraction"), ("must", "must not", "modal")]

# (domain, thing, place, swap thing)
THERE_IS = [
    ("animals", "bird", "the cage", "mouse"), ("animals", "dog", "the yard", "goat"),
    ("food", "sugar", "the jar", "salt"), ("food", "milk", "the fridge", "juice"),
    ("weather", "cloud", "the sky", "star"), ("weather", "snow", "the valley", "ice"),
    ("science", "oxygen", "the chamber", "helium"), ("science", "error", "the data", "gap"),
    ("geography", "bridge", "the village", "school"), ("geography", "lake", "the park", "pond"),
    ("people", "doctor", "the building", "teacher"), ("people", "guard", "the gate", "porter"),
    ("technology", "signal", "the tunnel", "network"), ("technology", "virus", "the file", "bug"),
    ("sports", "referee", "the field", "coach"), ("sports", "ball", "the bag", "racket"),
]

# (domain, subject, frequency verb phrase (3rd person), swap noun)
ALWAYS = [
    ("animals", "the owl", "hunts at night", "the bat"), ("food", "the cafe", "serves breakfast", "the bar"),
    ("weather", "the island", "gets heavy rain", "the coast"), ("science", "the sensor", "detects the gas", "the alarm"),
    ("geography", "the path", "leads to the lake", "the road"), ("people", "my uncle", "arrives early", "my aunt"),
    ("technology", "the laptop", "crashes at startup", "the tablet"), ("sports", "the keeper", "saves penalties", "the defender"),
]

# (domain, subject, decided-type verb, infinitive phrase, swap noun)
INFINITIVE = [
    ("people", "she", "decided", "sign the contract", "he"), ("people", "the mayor", "promised", "raise taxes", "the governor"),
    ("sports", "the player", "chose", "join the club", "the coach"), ("technology", "the company", "agreed", "update the app", "the agency"),
    ("science", "the lab", "planned", "repeat the test", "the team"), ("food", "the chef", "decided", "add salt", "the cook"),
]

NUMBERS = ["two", "three", "four", "five", "six", "seven"]


def cap(text: str) -> str:
    return text[0].upper() + text[1:]


def pairs():
    """Yield (kind, domain, original, counterfactual, target, swap) for every construction."""
    for domain, subj, adj, swap in COPULA:
        for tense, neg, contr in (("is", "is not", "isn't"), ("was", "was not", "wasn't")):
            yield "copula", domain, f"{cap(subj)} {tense} {adj}.", f"{cap(subj)} {neg} {adj}.", "not", (subj, swap)
            yield "contraction", domain, f"{cap(subj)} {tense} {adj}.", f"{cap(subj)} {contr} {adj}.", contr, (subj, swap)
        plural = {"is": "are"}
        yield "not-adjective", domain, f"{cap(subj)} seems {adj}.", f"{cap(subj)} seems not {adj}.", "not", (subj, swap)
        del plural
    for domain, subj, adj, swap in PLURAL:
        for tense, neg, contr in (("are", "are not", "aren't"), ("were", "were not", "weren't")):
            yield "copula", domain, f"{cap(subj)} {tense} {adj}.", f"{cap(subj)} {neg} {adj}.", "not", (subj, swap)
            yield "contraction", domain, f"{cap(subj)} {tense} {adj}.", f"{cap(subj)} {contr} {adj}.", contr, (subj, swap)
    for domain, subj, base, third, obj, swap in VERBS:
        yield "do-support", domain, f"{cap(subj)} {third} {obj}.", f"{cap(subj)} does not {base} {obj}.", "not", (subj, swap)
        yield "contraction", domain, f"{cap(subj)} {third} {obj}.", f"{cap(subj)} doesn't {base} {obj}.", "doesn't", (subj, swap)
        yield "do-support", domain, f"{cap(subj)} did {base} {obj}.", f"{cap(subj)} did not {base} {obj}.", "not", (subj, swap)
        yield "auxiliary", domain, f"{cap(subj)} has {_participle(base)} {obj}.", \
            f"{cap(subj)} has not {_participle(base)} {obj}.", "not", (subj, swap)
        yield "never", domain, f"{cap(subj)} often {third} {obj}.", f"{cap(subj)} never {third} {obj}.", "never", (subj, swap)
    for domain, subj, vp, swap in MODALS:
        for pos, neg, kind in MODAL_FORMS:
            yield kind, domain, f"{cap(subj)} {pos} {vp}.", f"{cap(subj)} {neg} {vp}.", neg.split()[-1], (subj, swap)
    for domain, thing, place, swap in THERE_IS:
        yield "no", domain, f"There is a {thing} in {place}.", f"There is no {thing} in {place}.", "no", (thing, swap)
        number = NUMBERS[len(thing) % len(NUMBERS)]
        yield "no", domain, f"We found {number} {_plural(thing)} in {place}.", \
            f"We found no {_plural(thing)} in {place}.", "no", (number, NUMBERS[(len(thing) + 1) % len(NUMBERS)])
    for domain, subj, vp, swap in ALWAYS:
        yield "never", domain, f"{cap(subj)} always {vp}.", f"{cap(subj)} never {vp}.", "never", (subj, swap)
        yield "never", domain, f"{cap(subj)} sometimes {vp}.", f"{cap(subj)} never {vp}.", "never", (subj, swap)
    for domain, subj, verb, inf, swap in INFINITIVE:
        yield "not-verb", domain, f"{cap(subj)} {verb} to {inf}.", f"{cap(subj)} {verb} not to {inf}.", "not", (subj, swap)
        yield "not-verb", domain, f"{cap(subj)} will {inf.split()[0]} soon.", f"{cap(subj)} will not {inf.split()[0]} soon.", "not", (subj, swap)


def _participle(verb: str) -> str:
    irregular = {"eat": "eaten", "drink": "drunk", "sell": "sold", "break": "broken", "win": "won",
                 "understand": "understood"}
    if verb in irregular:
        return irregular[verb]
    return verb + ("d" if verb.endswith("e") else "ed")


def _plural(noun: str) -> str:
    if noun in ("sugar", "milk", "snow", "oxygen", "ice", "salt", "juice", "helium"):
        return noun
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s")


def main() -> None:
    rng = random.Random(SEED)
    negation, contrast = [], []
    seen = set()
    for kind, domain, original, counterfactual, target, (word, swap) in pairs():
        if (original, counterfactual) in seen:
            continue
        seen.add((original, counterfactual))
        pid = f"neg-{len(negation):04d}"
        negation.append({"id": pid, "original": original, "counterfactual": counterfactual,
                         "kind": kind, "target": target, "domain": domain})
        swapped = _swap(original, word, swap)
        if swapped != original and rng.random() < 0.45:
            contrast.append({"id": f"swap-{len(contrast):04d}", "original": original,
                             "counterfactual": swapped,
                             "kind": "number-swap" if word in NUMBERS else "noun-swap",
                             "target": swap.split()[-1], "domain": domain, "group": pid})
    for name, rows in (("negation_pairs.jsonl", negation), ("contrast_pairs.jsonl", contrast)):
        with open(HERE / name, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} pairs")


def _swap(sentence: str, word: str, swap: str) -> str:
    lower = sentence[0].lower() + sentence[1:]
    if lower.startswith(word + " "):
        return cap(swap) + sentence[len(word):]
    if f" {word} " in sentence:
        return sentence.replace(f" {word} ", f" {swap} ", 1)
    return sentence


if __name__ == "__main__":
    main()
