"""OOLONG-Pairs-like: the answer is the set of user pairs meeting a condition; pair-level F1.

The lines are OOLONG's (:mod:`.oolong`); each user asks only some kinds of question, so a
condition on labels holds for a few users, and the answer lists every pair of them.
"""

from __future__ import annotations

import itertools
import random

from . import oolong
from ._common import Instance

ABOUT = "every pair of users whose inferred labels meet a condition (pair F1)"
PAIR_FORMAT = (
    "List every such pair once as (id1, id2) with the lower id first, one pair per line. "
    "Write NONE if there is no such pair."
)


def generate(rng: random.Random, size_tokens: int, index: int) -> Instance:
    """One pairs question over generated lines."""
    users = sorted(rng.sample(range(10_000, 99_999), min(40, max(10, size_tokens // 800))))
    labels_of = {}
    for user in users:
        chosen = tuple(label for label in oolong.LABELS if rng.random() < 0.5)
        labels_of[user] = chosen or (rng.choice(oolong.LABELS),)
    records = oolong.make_records(rng, size_tokens, users=users, labels_of=labels_of)
    seen: dict[int, set[str]] = {u: set() for u in users}
    for r in records:
        seen[r["user"]].add(r["label"])
    a, b = rng.sample(oolong.LABELS, 2)
    if index % 2 == 0:
        kind = "both_labels"
        condition = (
            f"both users have at least one line labelled {a!r} and at least one line labelled {b!r}"
        )
        chosen_users = [u for u in users if {a, b} <= seen[u]]
    else:
        kind = "label_not_other"
        condition = (
            f"both users have at least one line labelled {a!r} and neither user has any line "
            f"labelled {b!r}"
        )
        chosen_users = [u for u in users if a in seen[u] and b not in seen[u]]
    gold = [[str(x), str(y)] for x, y in itertools.combinations(sorted(chosen_users), 2)]
    return Instance(
        id="",
        task="oolong-pairs",
        size_tokens=size_tokens,
        context=oolong.render(records),
        question=(
            f"{oolong.label_note()}\n\nFind every pair of distinct users such that {condition}. "
            f"{PAIR_FORMAT}"
        ),
        gold=gold,
        scorer="pairs",
        metadata={
            "kind": kind,
            "labels": [a, b],
            "users": len(users),
            "qualifying_users": len(chosen_users),
            "lines": len(records),
        },
    )
