"""Seeded filler text: plausible English sentences from a fixed vocabulary, fast at any size."""

from __future__ import annotations

import random

_SUBJECTS = (
    "The committee",
    "A small team",
    "The old library",
    "Every visitor",
    "The river town",
    "Our neighbour",
    "The night shift",
    "A travelling musician",
    "The garden club",
    "The city council",
    "Most engineers",
    "The harbour master",
    "A quiet student",
    "The weather service",
    "The bakery on the corner",
    "A group of hikers",
)
_VERBS = (
    "discussed",
    "repaired",
    "described",
    "painted",
    "measured",
    "photographed",
    "planned",
    "reviewed",
    "ignored",
    "celebrated",
    "rebuilt",
    "counted",
    "studied",
    "visited",
    "moved",
)
_OBJECTS = (
    "the northern bridge",
    "a long report",
    "the spring festival",
    "an empty warehouse",
    "the railway timetable",
    "several maps",
    "the school roof",
    "a collection of letters",
    "the annual budget",
    "the market stalls",
    "a row of lanterns",
    "the mountain trail",
    "the museum archive",
    "an unusual clock",
    "the public gardens",
    "the fishing boats",
)
_TAILS = (
    "before the rain started",
    "after a long debate",
    "with surprising care",
    "during the autumn months",
    "without telling anyone",
    "for the third time this year",
    "as the sun went down",
    "in front of a small crowd",
    "while the radio played",
    "on a cold Tuesday morning",
    "despite the late hour",
    "with help from volunteers",
)


def sentence(rng: random.Random) -> str:
    """One filler sentence."""
    return (
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}."
    )


def filler(rng: random.Random, chars: int, *, paragraph: int = 6) -> list[str]:
    """Sentences adding up to about ``chars`` characters (a blank line every ``paragraph``)."""
    out: list[str] = []
    total = 0
    while total < chars:
        s = sentence(rng)
        if len(out) % paragraph == paragraph - 1:
            s += "\n"
        out.append(s)
        total += len(s) + 1
    return out
