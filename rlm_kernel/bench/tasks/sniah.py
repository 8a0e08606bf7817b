"""S-NIAH: one needle in a long haystack (RULER's single needle), scored by exact match.

The haystack is seeded filler prose; the needle is RULER's sentence "One of the special magic
numbers for {key} is: {value}." placed at a random depth. Other keys with their own numbers
are scattered as distractors, so finding *a* magic number is not enough.
"""

from __future__ import annotations

import random

from ._common import CHARS_PER_TOKEN, Instance
from ._text import filler

ABOUT = "one magic number hidden in filler prose at a random depth (exact match)"
NEEDLE = "One of the special magic numbers for {key} is: {value}."
_ADJECTIVES = (
    "amber",
    "brisk",
    "calm",
    "dusty",
    "eager",
    "faint",
    "gentle",
    "hollow",
    "icy",
    "jolly",
    "keen",
    "lucky",
    "misty",
    "noble",
    "odd",
    "proud",
    "quiet",
    "rapid",
    "silent",
    "tidy",
)
_NOUNS = (
    "anchor",
    "badger",
    "canyon",
    "dolphin",
    "ember",
    "falcon",
    "glacier",
    "harbor",
    "island",
    "jungle",
    "kettle",
    "lantern",
    "meadow",
    "nebula",
    "orchard",
    "pepper",
    "quarry",
    "raven",
)
DISTRACTORS = 4


def _keys(rng: random.Random, k: int) -> list[str]:
    pairs = [(a, n) for a in _ADJECTIVES for n in _NOUNS]
    return [f"{a}-{n}" for a, n in rng.sample(pairs, k)]


def generate(rng: random.Random, size_tokens: int, index: int) -> Instance:
    """One haystack of about ``size_tokens`` tokens with its needle and distractors."""
    keys = _keys(rng, DISTRACTORS + 1)
    values = rng.sample(range(1_000_000, 10_000_000), len(keys))
    needles = [NEEDLE.format(key=k, value=v) for k, v in zip(keys, values, strict=True)]
    room = size_tokens * CHARS_PER_TOKEN - sum(len(n) + 1 for n in needles)
    sentences = filler(rng, max(room, 0))
    depth = rng.random()
    spots = [int(depth * len(sentences))] + [rng.randrange(len(sentences) + 1) for _ in keys[1:]]
    # Insert from the deepest spot up so earlier positions stay valid.
    for spot, needle in sorted(zip(spots, needles, strict=True), key=lambda p: -p[0]):
        sentences.insert(spot, needle)
    key, value = keys[0], values[0]
    return Instance(
        id="",
        task="sniah",
        size_tokens=size_tokens,
        context=" ".join(sentences),
        question=(
            f"What is the special magic number for {key} mentioned in the provided text? "
            "Answer with the number alone."
        ),
        gold=str(value),
        scorer="exact",
        metadata={"key": key, "depth": round(depth, 4), "distractors": keys[1:]},
    )
