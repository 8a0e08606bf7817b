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

    A run tree shares one budget: a child run's account (:meth:`child`) counts its own calls and
    passes each charge up to its parent, so every account holds the totals of its subtree and
    the root's holds the tree's. Limits (sub-calls, cost, time) are checked against the root's
    totals and the root's clock, so no child can spend past what the root allows.
    """

    def __init__(
        self,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
        *,
        parent: Budget | None = None,
    ) -> None:
        self.limits = limits
        self._clock = clock
        self.parent = parent
        self.root: Budget = parent.root if parent is not None else self
        self.started = clock() if parent is None else parent.root.started
        self.usage: dict[Role, Usage] = {"root": Usage(), "sub": Usage()}
        self.priced_cost = 0.0
        self.unpriced_calls = 0
        self.subcalls = 0
        self.cache_hits = 0  # calls answered by a model-call cache: no tokens, no cost
        self._unpriced: set[str] = set() if parent is None else parent.root._unpriced

    def child(self) -> Budget:
        """The account of a child run: its own totals, every charge counted up the tree."""
        return Budget(self.root.limits, self._clock, parent=self)

    def _chain(self) -> list[Budget]:
        chain, account = [], self
        while account is not None:
            chain.append(account)
            account = account.parent
        return chain

    @property
    def cost_usd(self) -> float | None:
        return None if self.unpriced_calls else round(self.priced_cost, 6)

    def charge(self, role: Role, completion: Completion) -> None:
        if completion.cached:
            for account in self._chain():
                account.cache_hits += 1
            return
        for account in self._chain():
            account.usage[role].add(completion.usage)
            if completion.cost_usd is None:
                account.unpriced_calls += 1
            else:
                account.priced_cost += completion.cost_usd
        unpriced = completion.cost_usd is None and completion.model not in self._unpriced
        if unpriced and self.limits.max_cost_usd is not None:
            self._unpriced.add(completion.model)
            why = (
                "reported no token usage"
                if completion.usage.unknown_calls
                else "has no known price (give one with --price or set_price)"
            )
            warnings.warn(
                f"{completion.model} {why}: max_cost_usd counts only the calls whose cost is known",
                CostWarning,
                stacklevel=2,
            )

    def reserve_subcall(self) -> None:
        """Count one sub-call, or raise :class:`BudgetExceeded` if no sub-call or money is left."""
        cap, root = self.limits.max_subcalls, self.root
        if cap is not None and root.subcalls >= cap:
            raise BudgetExceeded("sub-call", root.subcalls, cap)
        self.check_cost()
        self.check_time()
        for account in self._chain():
            account.subcalls += 1

    def check_cost(self) -> None:
        cap, spent = self.limits.max_cost_usd, self.root.priced_cost
        if cap is not None and spent >= cap:
            raise BudgetExceeded("cost (USD)", round(spent, 6), cap)

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
        if cap is not None and self.root.priced_cost >= cap:
            return "max_cost"
        if self.limits.timeout is not None and self.elapsed() >= self.limits.timeout:
            return "timeout"
        return None

    def cell_timeout(self) -> float | None:
        """Seconds the next cell may run: the per-cell limit, cut by what is left of the run."""
        candidates = [t for t in (self.limits.cell_timeout, self.remaining_time()) if t is not None]
        return min(candidates) if candidates else None
