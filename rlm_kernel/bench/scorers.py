"""Scoring an answer against its gold: exact match, OOLONG's numeric score, pair-level F1.

Answers are free text from a model, so each scorer first reads the part it scores: the
normalized text (exact match), the last number (numeric), the ``(a, b)`` pairs (pairs).
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable
from typing import Any

__all__ = ["exact_match", "normalize", "numeric_score", "pair_f1", "parse_pairs", "score"]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_PAIR = re.compile(r"\(?\s*([A-Za-z0-9_-]+)\s*,\s*([A-Za-z0-9_-]+)\s*\)?")
_EDGE = string.punctuation + string.whitespace + "“”‘’"


def normalize(text: str) -> str:
    """Lower case, inner whitespace collapsed, quotes and punctuation around it removed."""
    return " ".join(str(text).split()).strip(_EDGE).lower()


def exact_match(answer: str | None, gold: str) -> float:
    """1.0 when the normalized answer is the normalized gold, else 0.0."""
    if answer is None:
        return 0.0
    return 1.0 if normalize(answer) == normalize(gold) else 0.0


def numeric_score(answer: str | None, gold: float) -> float:
    """OOLONG's numeric score: ``0.75 ** |answer - gold|``; 0.0 without a number.

    The last number in the answer is taken: models state their result last.
    """
    if answer is None:
        return 0.0
    found = _NUMBER.findall(answer)
    if not found:
        return 0.0
    try:
        value = float(found[-1].replace(",", ""))
    except ValueError:
        return 0.0
    return 0.75 ** abs(value - float(gold))


def parse_pairs(answer: str | None) -> set[tuple[str, str]]:
    """The unordered pairs ``(a, b)`` written in an answer, each as a sorted tuple."""
    if not answer:
        return set()
    return {_pair(a, b) for a, b in _PAIR.findall(answer) if a != b}


def _pair(a: Any, b: Any) -> tuple[str, str]:
    x, y = str(a), str(b)
    return (x, y) if x <= y else (y, x)


def pair_f1(answer: str | None, gold: Iterable[Iterable[Any]]) -> float:
    """F1 of the pairs in the answer against the gold pairs (order within a pair ignored).

    Both empty is 1.0: the answer "no pairs" to a question with none is right.
    """
    truth = {_pair(*p) for p in gold}
    found = parse_pairs(answer)
    if not truth and not found:
        return 1.0
    hits = len(truth & found)
    if hits == 0:
        return 0.0
    precision, recall = hits / len(found), hits / len(truth)
    return 2 * precision * recall / (precision + recall)


def score(scorer: str, answer: str | None, gold: Any) -> float:
    """Score ``answer`` with the scorer named ``scorer`` (``exact``, ``numeric``, ``pairs``).

    Raises:
        ValueError: an unknown scorer.
    """
    if scorer == "exact":
        return exact_match(answer, gold)
    if scorer == "numeric":
        value = numeric_score(answer, gold)
        return 0.0 if math.isnan(value) else value
    if scorer == "pairs":
        return pair_f1(answer, gold)
    raise ValueError(f"unknown scorer {scorer!r}; scorers are exact, numeric, pairs")
