"""Run trees: ``rlm_query`` starts a child run with its own kernel and notebook.

A child's notebook is written beside its parent, ``PARENT.children/<step>.<block>-<call>.ipynb``
(the cell and sub-call that started it), with the context it was handed beside it. The parent's
sub-call record links the child (``child``, relative to the parent) and the child links back
(``metadata.rlm.parent``, relative to the child). Budgets are the tree's: a child's account
passes every charge up (see :class:`~rlm_kernel.budget.Budget`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bridge import SubcallRequest
from .budget import Budget
from .context import ContextInfo, prepare
from .errors import BudgetExceeded, SubcallFailed
from .record import ChildSummary, ParentLink, Recorder, SubcallRecord, parse_code_cell_id, rebase
from .types import RunResult, Usage

__all__ = ["ChildRun", "ChildRunner", "children_dir"]

_BUDGET_STOPS = frozenset({"max_cost", "timeout", "max_subcalls"})


def children_dir(notebook: Path) -> Path:
    """The folder of a run's child notebooks and the contexts handed to them."""
    return notebook.with_name(f"{notebook.stem}.children")


@dataclass(frozen=True)
class ChildRun:
    """What a child run needs from its parent: its question, context, notebook and links."""

    question: str
    context: ContextInfo
    notebook: Path
    parent: ParentLink
    depth: int
    budget: Budget


Launch = Callable[[ChildRun], Awaitable[RunResult]]


class ChildRunner:
    """Starts the child runs of one run (the sub-call service's ``children``).

    Args:
        notebook: the parent's notebook.
        run_id: the parent's run id.
        depth: the parent's depth (the root is 1).
        budget: the parent's account of the tree's budget.
        recorder: the parent's recorder, whose summary lists the children as they end.
        launch: runs a child to its end (the run module's own entry point).
    """

    def __init__(
        self,
        *,
        notebook: Path,
        run_id: str,
        depth: int,
        budget: Budget,
        recorder: Recorder,
        launch: Launch,
    ) -> None:
        self.notebook = notebook
        self.run_id = run_id
        self.depth = depth
        self.budget = budget
        self.recorder = recorder
        self.launch = launch
        self.folder = children_dir(notebook)

    async def __call__(self, request: SubcallRequest, record: SubcallRecord) -> str:
        step, block = parse_code_cell_id(request.cell) or (0, 0)
        self.folder.mkdir(parents=True, exist_ok=True)
        child_nb = (self.folder / f"{step}.{block}-{record.id}.ipynb").resolve()
        stem = child_nb.with_suffix("")
        if request.context is not None:
            # The kernel wrote the context; it takes its final name beside the child notebook.
            handed = Path(request.context["path"])
            suffix = ".json" if request.context["kind"] == "json" else ".txt"
            target = Path(f"{stem}.context{suffix}")
            os.replace(handed, target)
            info = prepare(target, stem)
        else:
            info = prepare(request.prompt, stem)  # the prompt is the child's context
        parent_rel = Path(os.path.relpath(self.notebook.resolve(), child_nb.parent)).as_posix()
        record.child = Path(os.path.relpath(child_nb, self.notebook.resolve().parent)).as_posix()
        child = ChildRun(
            question=request.prompt,
            context=info,
            notebook=child_nb,
            parent=ParentLink(parent_rel, self.run_id, step, block, record.id),
            depth=self.depth + 1,
            budget=self.budget.child(),
        )
        started = time.monotonic()
        result = await self.launch(child)
        record.latency_s = round(time.monotonic() - started, 4)
        record.model = result.models.get("root", record.model) if result.models else record.model
        record.usage = _tree_usage(result)
        record.cost_usd = result.cost_usd
        self._add_summary(result, child, step, block, record.id)
        if result.answer is not None:
            record.response = result.answer
            return result.answer
        where = f"the child run {record.child}"
        if result.stop_reason in _BUDGET_STOPS or self.budget.exhausted():
            why = result.error or f"its {result.stop_reason} budget is used up"
            raise BudgetExceeded(str(result.stop_reason), 0, 0, message=f"{where} stopped: {why}")
        why = result.error or f"{result.status}, {result.stop_reason}"
        raise SubcallFailed(f"{where} ended without an answer ({why})")

    def _add_summary(
        self, result: RunResult, child: ChildRun, step: int, block: int, call: int
    ) -> None:
        rel = Path(os.path.relpath(child.notebook, self.notebook.resolve().parent)).as_posix()
        entries: list[dict[str, Any]] = [
            ChildSummary(
                notebook=rel,
                question=child.question[:200],
                status=result.status,
                steps=result.steps,
                depth=child.depth,
                tokens=sum(u.total_tokens for u in result.usage.values()),
                cost_usd=result.cost_usd,
                step=step,
                block=block,
                subcall=call,
            ).to_metadata()
        ]
        for grandchild in result.children:
            moved = dict(grandchild)
            moved["notebook"] = rebase(grandchild["notebook"], child.notebook, self.notebook)
            entries.append(moved)
        self.recorder.meta.setdefault("children", []).extend(entries)


def _tree_usage(result: RunResult) -> Usage:
    total = Usage()
    for usage in result.usage.values():
        total.add(usage)
    return total
