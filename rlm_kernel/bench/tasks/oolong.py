"""OOLONG-like aggregation: thousands of labelled-by-meaning lines, questions that count them.

Each line is ``Date: Mar 04, 2023 || User: 48213 || Instance: <a question someone asked>``.
The label of a line is the kind of answer its question seeks, one of OOLONG's six coarse
classes (``abbreviation``, ``entity``, ``description and abstract concept``, ``human being``,
``location``, ``numeric value``); it is never written down, so it must be inferred from the
text, line by line, which is what sub-calls are for. Questions ask for counts (scored with
OOLONG's ``0.75 ** |error|``), and for the most frequent label or user (exact match).
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from typing import Any

from ._common import CHARS_PER_TOKEN, Instance

ABOUT = "count and compare labels that must be inferred from thousands of lines (0.75^|err|, exact)"
LABELS = (
    "abbreviation",
    "entity",
    "description and abstract concept",
    "human being",
    "location",
    "numeric value",
)
_ABBR = ("NASA", "UNESCO", "HTML", "DNA", "RADAR", "LASER", "SCUBA", "NATO", "GPS", "CPU")
_ORGS = (
    "the World Health Organization",
    "the European Union",
    "the United Nations",
    "the International Olympic Committee",
    "Portable Document Format",
    "the Federal Reserve",
)
_ANIMALS = ("tortoise", "octopus", "eagle", "salmon", "wolf", "giraffe", "bee", "whale")
_THINGS = (
    "a violin",
    "the printing press",
    "the telescope",
    "a steam engine",
    "the compass",
    "a bicycle",
    "the telephone",
    "a microwave oven",
    "the light bulb",
    "a typewriter",
)
_CONCEPTS = ("irony", "inflation", "entropy", "democracy", "photosynthesis", "nostalgia")
_PLACES = (
    "Lake Titicaca",
    "Mount Kilimanjaro",
    "the Atacama Desert",
    "Timbuktu",
    "Angkor Wat",
    "the Great Barrier Reef",
    "Machu Picchu",
    "the Dead Sea",
    "Patagonia",
    "Petra",
)
_EVENTS = ("the Olympic Games", "the World Cup", "the Eurovision contest", "the Tour de France")
_TOPICS = ("the French Revolution", "whales", "the Moon landing", "ancient Rome", "chess")
_CONTAINERS = ("a deck of cards", "a dozen", "a chess set", "a week", "a century", "a piano")
_UNITS = ("cards", "eggs", "pieces", "hours", "years", "keys")

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "abbreviation": (
        "What does {abbr} stand for?",
        "What is the full form of {abbr}?",
        "What is the abbreviation for {org}?",
    ),
    "entity": (
        "What {animal} species lives the longest?",
        "What musical instrument is most like {thing}?",
        "Which breed of {animal} is the rarest?",
        "What is the best book about {topic}?",
    ),
    "description and abstract concept": (
        "What is the meaning of {concept}?",
        "How does {thing} work?",
        "Why is {concept} important?",
        "What is the difference between {concept} and {concept2}?",
    ),
    "human being": (
        "Who invented {thing}?",
        "Who wrote the first history of {topic}?",
        "Which explorer first reached {place}?",
        "Who was the first person to photograph {place}?",
    ),
    "location": (
        "Where is {place} located?",
        "In which country is {place}?",
        "Which city hosted {event} most recently?",
        "Where does the {animal} live in the wild?",
    ),
    "numeric value": (
        "How many {unit} are in {container}?",
        "When was {thing} invented?",
        "How far is {place} from the equator?",
        "In what year did {event} begin?",
    ),
}
_START = dt.date(2022, 1, 1)
_DAYS = 3 * 365


def instance_text(rng: random.Random, label: str) -> str:
    """A question whose answer type is ``label``."""
    template = rng.choice(_TEMPLATES[label])
    concept, concept2 = rng.sample(_CONCEPTS, 2)
    return template.format(
        abbr=rng.choice(_ABBR),
        org=rng.choice(_ORGS),
        animal=rng.choice(_ANIMALS),
        thing=rng.choice(_THINGS),
        concept=concept,
        concept2=concept2,
        place=rng.choice(_PLACES),
        event=rng.choice(_EVENTS),
        topic=rng.choice(_TOPICS),
        container=rng.choice(_CONTAINERS),
        unit=rng.choice(_UNITS),
    )


def format_date(day: dt.date) -> str:
    """``Mar 04, 2023``."""
    return day.strftime("%b %d, %Y")


def make_records(
    rng: random.Random,
    size_tokens: int,
    *,
    users: list[int],
    labels_of: dict[int, tuple[str, ...]] | None = None,
    weights: tuple[float, ...] | None = None,
) -> list[dict[str, Any]]:
    """Lines adding up to about ``size_tokens`` tokens, in date order.

    Args:
        rng: the seeded generator.
        size_tokens: the size of the rendered lines.
        users: the user ids lines are drawn from.
        labels_of: per user, the labels its lines may have (default: all).
        weights: how often each label of :data:`LABELS` appears (default: equal).
    """
    budget = size_tokens * CHARS_PER_TOKEN
    records, total = [], 0
    while total < budget:
        user = rng.choice(users)
        allowed = labels_of[user] if labels_of else LABELS
        if weights is None or labels_of:
            label = rng.choice(allowed)
        else:
            label = rng.choices(LABELS, weights)[0]
        day = _START + dt.timedelta(days=rng.randrange(_DAYS))
        record = {"date": day, "user": user, "text": instance_text(rng, label), "label": label}
        total += len(render_line(record)) + 1
        records.append(record)
    records.sort(key=lambda r: r["date"])
    return records


def render_line(record: dict[str, Any]) -> str:
    """One line of the context."""
    return (
        f"Date: {format_date(record['date'])} || User: {record['user']} || "
        f"Instance: {record['text']}"
    )


def render(records: list[dict[str, Any]]) -> str:
    """The context: one line per record."""
    return "\n".join(render_line(r) for r in records)


def label_note() -> str:
    """How the questions explain the hidden labels."""
    names = ", ".join(repr(label) for label in LABELS)
    return (
        "Each line of the context is a question a user asked. Its label is the kind of answer "
        f"that question seeks, one of: {names}. The labels are not written in the context: infer "
        "each line's label from its text."
    )


def _unique_top(counter: Counter) -> Any | None:
    ranked = counter.most_common(2)
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def generate(rng: random.Random, size_tokens: int, index: int) -> Instance:
    """One aggregation question over generated lines."""
    users = rng.sample(range(10_000, 99_999), max(12, size_tokens // 400))
    weights = tuple(rng.uniform(0.5, 2.0) for _ in LABELS)
    records = make_records(rng, size_tokens, users=users, weights=weights)
    kinds = ["count_label", "most_common", "user_count", "span_count", "top_user"]
    kind = kinds[index % len(kinds)]
    label = rng.choice(LABELS)
    by_label = Counter(r["label"] for r in records)
    fmt = "Answer with the number alone."
    gold: Any
    meta: dict[str, Any] = {"kind": kind, "lines": len(records)}
    if kind == "most_common" and _unique_top(by_label) is not None:
        question = "Which label is the most common in the context? Answer with the label alone."
        gold, scorer = _unique_top(by_label), "exact"
    elif kind == "top_user" and _unique_top(
        Counter(r["user"] for r in records if r["label"] == label)
    ):
        top = _unique_top(Counter(r["user"] for r in records if r["label"] == label))
        question = (
            f"Which user has the most lines labelled {label!r}? Answer with the user id alone."
        )
        gold, scorer = str(top), "exact"
        meta["label"] = label
    elif kind == "user_count":
        user = rng.choice(sorted({r["user"] for r in records}))
        question = f"How many lines of user {user} are labelled {label!r}? {fmt}"
        gold = sum(1 for r in records if r["user"] == user and r["label"] == label)
        scorer = "numeric"
        meta.update(label=label, user=user)
    elif kind == "span_count":
        a, b = sorted(rng.sample(range(_DAYS), 2))
        first, last = _START + dt.timedelta(days=a), _START + dt.timedelta(days=b)
        question = (
            f"How many lines labelled {label!r} are dated from {format_date(first)} to "
            f"{format_date(last)}, both days included? {fmt}"
        )
        gold = sum(1 for r in records if r["label"] == label and first <= r["date"] <= last)
        scorer = "numeric"
        meta.update(label=label, first=first.isoformat(), last=last.isoformat())
    else:
        meta["kind"] = "count_label"
        question = f"How many lines of the context are labelled {label!r}? {fmt}"
        gold, scorer = by_label[label], "numeric"
        meta["label"] = label
    return Instance(
        id="",
        task="oolong",
        size_tokens=size_tokens,
        context=render(records),
        question=f"{label_note()}\n\n{question}",
        gold=gold,
        scorer=scorer,  # type: ignore[arg-type]
        metadata=meta,
    )
