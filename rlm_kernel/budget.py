"""The run's accounts: tokens and dollars per role, sub-calls, steps and the clock."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Literal

from .errors import BudgetExceeded
from .types import Completion, Limits, Usage

Role = Literal["root", "sub"]


class CostWarning(UserWarning):
    """A cost limit that cannot see every call's cost."""


class Budget:
    """Counts what a run spends and says when a limit is reached.

    Cost is the sum of priced calls; a call to a model with no known price makes
    :attr:`cost_usd` ``None`` (unknown, not a guess) while the priced part still counts against
    ``max_cost_usd``.
    """

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self.started = clock()
        self.usage: dict[Role, Usage] = {"root": Usage(), "sub": Usage()}
        self.priced_cost = 0.0
        self.unpriced_calls = 0
        self.subcalls = 0
        self._unpriced: set[str] = set()

    @property
    def cost_usd(self) -> float | None:
        return None if self.unpriced_calls else round(self.priced_cost, 6)

    def charge(self, role: Role, completion: Completion) -> None:
        self.usage[role].add(completion.usage)
        if completion.cost_usd is None:
            self.unpriced_calls += 1
            if self.limits.max_cost_usd is not None and completion.model not in self._unpriced:
                self._unpriced.add(completion.model)
                warnings.warn(
                    f"{completion.model} has no known price: max_cost_usd counts only the calls "
                    "of priced models (add its prices to rlm_kernel/llm/prices.json)",
                    CostWarning,
                    stacklevel=2,
                )
        else:
            self.priced_cost += completion.cost_usd

    def reserve_subcall(self) -> None:
        """Count one sub-call, or raise :class:`BudgetExceeded` if no sub-call or money is left."""
        cap = self.limits.max_subcalls
        if cap is not None and self.subcalls >= cap:
            raise BudgetExceeded("sub-call", self.subcalls, cap)
        self.check_cost()
        self.check_time()
        self.subcalls += 1

    def check_cost(self) -> None:
        cap = self.limits.max_cost_usd
        if cap is not None and self.priced_cost >= cap:
            raise BudgetExceeded("cost (USD)", round(self.priced_cost, 6), cap)

    def check_time(self) -> None:
        cap = self.limits.timeout
        if cap is not None and self.elapsed() >= cap:
            raise BudgetExceeded("time (s)", round(self.elapsed(), 3), cap)

    def elapsed(self) -> float:
        return self._clock() - self.started

    def remaining_time(self) -> float | None:
        cap = self.limits.timeout
        return None if cap is None else max(0.0, cap - self.elapsed())

    def exhausted(self) -> str | None:
        """The stop reason once the run itself must stop: ``max_cost`` or ``timeout``."""
        cap = self.limits.max_cost_usd
        if cap is not None and self.priced_cost >= cap:
            return "max_cost"
        if self.limits.timeout is not None and self.elapsed() >= self.limits.timeout:
            return "timeout"
        return None

    def cell_timeout(self) -> float | None:
        """Seconds the next cell may run: the per-cell limit, cut by what is left of the run."""
        candidates = [t for t in (self.limits.cell_timeout, self.remaining_time()) if t is not None]
        return min(candidates) if candidates else None
