"""The run's accounts and limits."""

from __future__ import annotations

import pytest

from rlm_kernel.budget import Budget
from rlm_kernel.errors import BudgetExceeded, UsageError
from rlm_kernel.run import RLM
from rlm_kernel.types import Completion, Limits, Usage


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def completion(cost: float | None, tokens: int = 10) -> Completion:
    return Completion("x", "m", Usage(calls=1, input_tokens=tokens, output_tokens=1), cost_usd=cost)


def test_subcall_cap_raises_with_the_numbers():
    budget = Budget(Limits(max_subcalls=2))
    budget.reserve_subcall()
    budget.reserve_subcall()
    with pytest.raises(BudgetExceeded) as e:
        budget.reserve_subcall()
    assert (e.value.limit, e.value.spent, e.value.budget) == ("sub-call", 2, 2)
    assert budget.subcalls == 2


def test_cost_is_summed_and_unknown_prices_make_it_unknown():
    budget = Budget(Limits(max_cost_usd=0.05))
    budget.charge("root", completion(0.02))
    budget.charge("sub", completion(0.02))
    assert budget.cost_usd == 0.04 and budget.exhausted() is None
    with pytest.warns(UserWarning, match="no known price"):
        budget.charge("sub", completion(None))
    assert budget.cost_usd is None  # one unpriced call: the total is unknown, not a guess
    budget.charge("root", completion(0.02))
    assert budget.exhausted() == "max_cost"
    with pytest.raises(BudgetExceeded, match="cost"):
        budget.reserve_subcall()
    assert budget.usage["root"].calls == 2 and budget.usage["sub"].input_tokens == 20


def test_time_limits_cut_the_cell_timeout():
    clock = Clock()
    budget = Budget(Limits(timeout=60, cell_timeout=30), clock=clock)
    assert budget.cell_timeout() == 30
    clock.now += 45
    assert budget.cell_timeout() == 15
    clock.now += 20
    assert budget.exhausted() == "timeout"
    with pytest.raises(BudgetExceeded, match="time"):
        budget.check_time()


def test_limits_reject_nonsense_and_rlm_names_unknown_options():
    with pytest.raises(ValueError, match="max_steps"):
        Limits(max_steps=0)
    with pytest.raises(UsageError, match="max_stepz"):
        RLM(lambda m: "", lambda m: "", max_stepz=3)
    with pytest.raises(UsageError, match="positive"):
        RLM(lambda m: "", lambda m: "", cell_timeout=-1)
    assert RLM(lambda m: "", lambda m: "", max_steps=3).limits.max_steps == 3


def test_subcall_record_dict_has_every_field():
    import dataclasses

    from rlm_kernel.record import SubcallRecord

    record = SubcallRecord(1, "llm", "m", "ab", 2, "hi", usage=Usage(calls=1, input_tokens=3))
    data = record.to_dict()
    # count is written only for a record that stands for repeated refusals
    assert set(data) == {f.name for f in dataclasses.fields(SubcallRecord)} - {"count"}
    assert data["usage"]["input_tokens"] == 3
    record.count = 7
    assert record.to_dict()["count"] == 7
    assert SubcallRecord.from_metadata(record.to_dict()).count == 7
    assert SubcallRecord.from_metadata(data).count == 1


def test_a_cost_limit_warns_once_per_unpriced_model():
    budget = Budget(Limits(max_cost_usd=1.0))
    with pytest.warns(UserWarning, match="has no known price") as record:
        budget.charge("root", completion(None))
        budget.charge("root", completion(None))
    assert len(record) == 1


def test_a_child_account_counts_up_the_tree_and_meets_the_roots_limits():
    root = Budget(Limits(max_subcalls=3, max_cost_usd=1.0))
    child = root.child()
    grandchild = child.child()
    grandchild.reserve_subcall()
    child.reserve_subcall()
    grandchild.charge("sub", completion(0.25))
    assert (root.subcalls, child.subcalls, grandchild.subcalls) == (2, 2, 1)
    assert (root.cost_usd, child.cost_usd, grandchild.cost_usd) == (0.25, 0.25, 0.25)
    assert root.usage["sub"].calls == child.usage["sub"].calls == 1
    root.reserve_subcall()
    with pytest.raises(BudgetExceeded, match="sub-call budget exhausted: 3 used of 3"):
        grandchild.reserve_subcall()  # the root's limit, whoever asks
    grandchild.charge("sub", completion(0.8))
    assert grandchild.exhausted() == "max_cost" == root.exhausted()
