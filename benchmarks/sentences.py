"""Deterministic synthetic sentences of 10-25 words for benchmarks."""

from __future__ import annotations

import random

SUBJECTS = ["the old farmer", "a young engineer", "my neighbour", "the committee", "our teacher",
            "the small dog", "every student", "the city council", "a famous painter", "the pilot"]
VERBS = ["found", "built", "described", "painted", "repaired", "ignored", "visited", "bought",
         "carried", "discussed", "remembered", "measured"]
OBJECTS = ["the wooden bridge", "a strange letter", "the red car", "an ancient map",
           "the broken window", "a quiet garden", "the new library", "a heavy suitcase"]
TAILS = ["near the river", "after the long winter", "without any help", "in the early morning",
         "during the storm", "for the third time", "before the meeting started",
         "while everyone was watching", "with great care", "at the edge of the forest",
         "because the road was closed", "on a cold and windy afternoon"]


def sentences(n: int, seed: int = 0, min_words: int = 10, max_words: int = 25) -> list[str]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        words = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}".split()
        target = rng.randint(min_words, max_words)
        while len(words) < target:
            words += rng.choice(TAILS).split()
        words = words[:target]
        out.append(" ".join(words).capitalize() + ".")
    return out
