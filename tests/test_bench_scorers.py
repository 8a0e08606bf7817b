"""The benchmark scorers on hand-checked cases, and the report's percentile."""

from __future__ import annotations

import math

import pytest

from rlm_kernel.bench.report import build, percentile
from rlm_kernel.bench.scorers import (
    exact_match,
    numeric_score,
    pair_f1,
    parse_pairs,
    score,
)


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("1234567", "1234567", 1.0),
        ("  1234567. ", "1234567", 1.0),  # punctuation and blanks around are not the answer
        ('"Location"', "location", 1.0),  # nor are quotes and case
        ("human   being", "human being", 1.0),
        ("The number is 1234567", "1234567", 0.0),  # exact: more words are a different answer
        ("1234568", "1234567", 0.0),
        (None, "1234567", 0.0),
        ("", "x", 0.0),
    ],
)
def test_exact_match(answer, gold, expected):
    assert exact_match(answer, gold) == expected


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("42", 42, 1.0),
        ("40", 42, 0.5625),  # 0.75 ** 2
        ("about 45 lines", 42, 0.421875),  # 0.75 ** 3
        ("1,204", 1200, 0.31640625),  # thousands separators are read: 0.75 ** 4
        ("between 10 and 41", 42, 0.75),  # the last number is the answer
        ("-1", 0, 0.75),
        ("no idea", 42, 0.0),
        (None, 42, 0.0),
    ],
)
def test_numeric_score_is_oolongs(answer, gold, expected):
    assert math.isclose(numeric_score(answer, gold), expected)


def test_pairs_are_read_unordered_and_without_self_pairs():
    assert parse_pairs("(1, 2)\n(3,1)\n2, 1\n(4, 4)") == {("1", "2"), ("1", "3")}
    assert parse_pairs("NONE") == set()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("(1, 2)\n(1, 3)\n(2, 3)", 1.0),
        ("(2, 1)\n(3, 1)", 0.8),  # precision 1, recall 2/3
        ("(1, 2)\n(4, 5)", 0.4),  # precision 1/2, recall 1/3
        ("(4, 5)", 0.0),
        ("NONE", 0.0),
    ],
)
def test_pair_f1(answer, expected):
    gold = [["1", "2"], ["1", "3"], ["2", "3"]]
    assert math.isclose(pair_f1(answer, gold), expected)


def test_pair_f1_with_no_pairs_to_find():
    assert pair_f1("NONE", []) == 1.0
    assert pair_f1("(1, 2)", []) == 0.0


def test_score_dispatches_by_name():
    assert score("exact", "a", "A") == 1.0
    assert score("numeric", "3", 5) == 0.5625
    assert score("pairs", "(1,2)", [[2, 1]]) == 1.0
    with pytest.raises(ValueError, match="unknown scorer 'f1'"):
        score("f1", "a", "a")


def test_percentile_interpolates():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert math.isclose(percentile([1.0, 2.0, 3.0, 4.0], 95), 3.85)
    assert percentile([7.0], 95) == 7.0


def test_rows_aggregate_per_method_and_size():
    def rec(method, size, score, cost, status="answered"):
        return {
            "method": method, "size_tokens": size, "score": score, "cost_usd": cost,
            "status": status, "input_tokens": 100, "output_tokens": 10, "duration_s": 2.0,
            "calls": 2, "cached_calls": 1,
        }  # fmt: skip

    report = build(
        [
            rec("rlm", 8000, 1.0, 0.01),
            rec("rlm", 8000, 0.0, 0.03),
            rec("rlm", 8000, 0.5, 0.02, status="error"),
            rec("direct", 8000, 0.0, None),
        ],
        config={"methods": ["rlm", "direct"], "task": "sniah"},
    )
    rlm, direct = report.rows
    assert (rlm.method, rlm.runs, rlm.score, rlm.errors) == ("rlm", 3, 0.5, 1)
    assert math.isclose(rlm.cost_mean, 0.02) and math.isclose(rlm.cost_median, 0.02)
    assert math.isclose(rlm.cost_p95, 0.029)
    assert (rlm.tokens_mean, rlm.cached_calls, rlm.calls) == (110, 3, 6)
    assert direct.cost_mean is None  # unpriced: no cost, not a cost of zero
    table = report.markdown()
    assert "| rlm | 8,000 | 3 | 0.500 | $0.0200 | $0.0200 | $0.0290 |" in table
    assert "| direct | 8,000 | 1 | 0.000 | — | — | — |" in table
