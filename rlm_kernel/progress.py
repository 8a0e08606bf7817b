"""Following a run tree as it goes: the state of each child run, and progress lines on a terminal.

A run's ``on_child`` hook reports every child and grandchild as it starts, after each of its
steps and when it ends. :class:`ChildTracker` keeps one small :class:`ChildState` per child,
in tree order, for the live widget (``live.LiveDisplay``) and for :class:`TerminalProgress`,
which prints a line per step of the root and of every child on stderr, indented by depth.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .errors import NotebookFormatError
from .record import read
from .types import RunResult, Usage, tokens_text

__all__ = [
    "ChildState",
    "ChildTracker",
    "TerminalProgress",
    "plural",
    "start_line",
    "totals_line",
]

_CHILD_ID = re.compile(r"(\d+)\.(\d+)-(\d+)")
QUESTION_CHARS = 60


def plural(count: int, word: str) -> str:
    """``"1 sub-call"``, ``"2 sub-calls"``: a count and its noun."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def cost_text(cost_usd: float | None) -> str:
    """A cost in dollars, or ``"cost unknown"`` when some model has no price."""
    return "cost unknown" if cost_usd is None else f"${cost_usd:.4f}"


def one_line(text: str, limit: int = QUESTION_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _tokens(usage: dict[str, Usage] | None) -> int:
    return sum(u.total_tokens for u in (usage or {}).values())


def _tokens_text(usage: dict[str, Usage] | None) -> str:
    # A server that reports no usage makes the sum a lower bound, or unknown: never a false 0.
    return tokens_text((usage or {}).values())


@dataclass
class ChildState:
    """What is known of one child run while the tree runs.

    Attributes:
        notebook: the child's notebook.
        label: its place in the tree, e.g. ``"3.1-2"`` for the child of the root's sub-call 2
            in cell 3.1, ``"3.1-2/1.1-1"`` for a grandchild.
        depth: 2 for a child of the root, 3 for a grandchild, ...
        question: the question it was asked.
        state: ``"starting"``, ``"running"``, or how it ended (a run status).
        step, max_steps: its last step and its own step limit.
        tokens, cost_usd: spent by it and its own children (``cost_usd`` ``None``: unknown).
        started, ended: ``time.monotonic()`` when it started and ended.
    """

    notebook: Path
    label: str
    depth: int
    question: str
    key: tuple[tuple[int, ...], ...]
    state: str = "starting"
    step: int = 0
    max_steps: int = 0
    tokens: int = 0
    cost_usd: float | None = 0.0
    started: float = 0.0
    ended: float | None = None

    @property
    def running(self) -> bool:
        """Whether the child has not ended yet."""
        return self.ended is None

    def elapsed(self) -> float:
        """Seconds it ran (so far, while it runs)."""
        return (self.ended if self.ended is not None else time.monotonic()) - self.started


class ChildTracker:
    """The children of one run tree, from its ``on_child`` events, in tree order.

    Args:
        notebook: the root's notebook; children are labelled by their place below it.
    """

    def __init__(self, notebook: str | os.PathLike[str]) -> None:
        self.root = Path(notebook).resolve()
        self.children: dict[Path, ChildState] = {}

    def update(
        self,
        *,
        event: str,
        notebook: str,
        depth: int,
        question: str,
        result: RunResult | None = None,
        step: int | None = None,
        max_steps: int | None = None,
        usage: dict[str, Usage] | None = None,
        cost_usd: float | None = None,
        **_: Any,
    ) -> ChildState:
        """Take one ``on_child`` event; return the child's state after it."""
        path = Path(notebook).resolve()
        child = self.children.get(path)
        if child is None:
            label, key = self._place(path)
            child = ChildState(path, label, depth, question, key, started=time.monotonic())
            self.children[path] = child
        if event == "step":
            child.state = "running"
            child.step, child.max_steps = step or child.step, max_steps or child.max_steps
            child.tokens, child.cost_usd = _tokens(usage), cost_usd
        elif event == "end" and result is not None:
            self._end(child, result.status, result.steps, _tokens(result.usage), result.cost_usd)
        return child

    def settle(self) -> list[ChildState]:
        """Mark children that never reported their end as their notebooks record them.

        A tree that was stopped ends its children by cancellation, which reports nothing; by
        the time the root has returned, each child's notebook holds how it ended.

        Returns:
            The children that were settled.
        """
        settled = []
        for child in self.children.values():
            if not child.running:
                continue
            try:
                run = read(child.notebook).run
            except (NotebookFormatError, OSError):
                self._end(child, "error", child.step, child.tokens, child.cost_usd)
            else:
                tokens = _tokens(run.usage)
                self._end(child, run.status, run.steps, tokens, run.cost_usd)
            settled.append(child)
        return settled

    def ordered(self) -> list[ChildState]:
        """Every child, each right after its parent (depth first, in the order they were made)."""
        return sorted(self.children.values(), key=lambda c: c.key)

    def counts(self) -> tuple[int, int]:
        """How many children are running and how many have ended."""
        running = sum(c.running for c in self.children.values())
        return running, len(self.children) - running

    @staticmethod
    def _end(
        child: ChildState, status: str, steps: int, tokens: int, cost_usd: float | None
    ) -> None:
        child.state, child.step, child.tokens, child.cost_usd = status, steps, tokens, cost_usd
        child.ended = time.monotonic()

    def _place(self, path: Path) -> tuple[str, tuple[tuple[int, ...], ...]]:
        # ROOT.children/3.1-2.children/1.1-1.ipynb is the grandchild 3.1-2/1.1-1.
        try:
            parts = path.relative_to(self.root.parent).parts[1:]
        except ValueError:
            parts = (path.name,)
        ids = [p.removesuffix(".children").removesuffix(".ipynb") for p in parts]
        key = []
        for part in ids:
            m = _CHILD_ID.fullmatch(part)
            key.append(tuple(int(g) for g in m.groups()) if m else (sys.maxsize,))
        return "/".join(ids), tuple(key)


class TerminalProgress:
    """Hooks that print progress lines on stderr: each step, failed blocks and sub-calls, children.

    A step's line comes once its code has run, with the code blocks and sub-calls of that step
    and the run's totals so far. The first failure of each kind of sub-call is printed with the
    model's name and the API's reason. A child's lines are indented by its depth and carry its
    place in the tree (``[3.1-2]``): when it starts, after each of its steps, and when it ends.

    Args:
        stream: where the lines go (default ``sys.stderr``).
        notebook: the root's notebook, to label children by their place below it (by default
            found from the first child's notebook path).
    """

    def __init__(
        self, stream: TextIO | None = None, notebook: str | os.PathLike[str] | None = None
    ) -> None:
        self.stream = stream
        self.tracker = ChildTracker(notebook) if notebook is not None else None
        self._failures: set[str] = set()

    def on_start(self, *, models: dict[str, str], limits: Any, **_: Any) -> None:
        self._print(start_line(models, limits))

    def on_step_end(self, *, step, max_steps, blocks, step_subcalls, usage, cost_usd, **kw):
        last = " (last call)" if kw.get("last_call") else ""
        self._print(
            f"step {step}/{max_steps}{last}: {self._figures(blocks, step_subcalls)} · "
            f"{self._totals(usage, cost_usd)} · {kw.get('elapsed_s', 0.0):.1f}s"
        )

    def on_output(self, *, step, block, status, shown, **_):
        if status != "ok":
            self._print(f"  block {step}.{block}: {status}")

    def on_subcall(self, *, record: Any, **_: Any) -> None:
        error = getattr(record, "error", None)
        if error is None or error.type == "SubcallCancelled":
            return
        # The same failure repeated over a batch is said once.
        key = f"{record.model}\0{error.message}"
        if key not in self._failures:
            self._failures.add(key)
            self._print(f"  sub-call to {record.model} failed: {error.message}")

    def on_child(self, *, event: str, notebook: str, depth: int, **kwargs: Any) -> None:
        if self.tracker is None:
            # A child at depth d is ROOT.children/(<id>.children/ d - 2 times)<id>.ipynb.
            folder = Path(notebook).resolve().parents[max(0, depth - 2)]
            self.tracker = ChildTracker(folder.with_name(folder.name.removesuffix(".children")))
        child = self.tracker.update(event=event, notebook=notebook, depth=depth, **kwargs)
        where = f"{'  ' * (depth - 1)}[{child.label}]"
        if event == "start":
            self._print(f"{where} started: {one_line(child.question)}")
        elif event == "step_end":
            step = kwargs.get("step", child.step)
            figures = self._figures(kwargs.get("blocks", 0), kwargs.get("step_subcalls", 0))
            totals = self._totals(kwargs.get("usage"), kwargs.get("cost_usd"))
            self._print(f"{where} step {step}/{kwargs.get('max_steps')}: {figures} · {totals}")
        elif event == "end":
            self._print(
                f"{where} {child.state.replace('_', ' ')} after {plural(child.step, 'step')} · "
                f"{child.tokens:,} tokens · {cost_text(child.cost_usd)} · {child.elapsed():.1f}s"
            )

    def hooks(self) -> dict[str, Any]:
        """The ``on_start``, ``on_step_end``, ``on_output``, ``on_subcall``, ``on_child`` hooks."""
        return {
            "on_start": self.on_start,
            "on_step_end": self.on_step_end,
            "on_output": self.on_output,
            "on_subcall": self.on_subcall,
            "on_child": self.on_child,
        }

    @staticmethod
    def _figures(blocks: int, subcalls: int) -> str:
        return f"ran {plural(blocks, 'code block')}, {plural(subcalls, 'sub-call')}"

    @staticmethod
    def _totals(usage: dict[str, Usage] | None, cost_usd: float | None) -> str:
        return f"total {_tokens_text(usage)}, {cost_text(cost_usd)}"

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stderr, flush=True)


def start_line(models: dict[str, str], limits: Any) -> str:
    """The line a run prints when it starts: its models and the limits that bound it."""
    root, sub = models.get("root"), models.get("sub")
    who = f"models: {root}" + ("" if sub == root else f" (root), {sub} (sub-calls)")
    bounds = [plural(limits.max_steps, "step")]
    if limits.max_subcalls is not None:
        bounds.append(plural(limits.max_subcalls, "sub-call"))
    bounds.append("no cost cap" if limits.max_cost_usd is None else f"${limits.max_cost_usd:g}")
    if limits.timeout is not None:
        bounds.append(f"{limits.timeout:g}s")
    return f"{who} · at most {', '.join(bounds)}"


def totals_line(result: RunResult) -> str:
    """The last line of a run: how it ended and what it spent, and where its notebook is."""
    ended = result.status.replace("_", " ")
    if result.stop_reason and result.stop_reason != "final":
        ended += f" ({result.stop_reason.replace('_', ' ')})"
    return (
        f"{ended} · {plural(result.steps, 'step')} · {_tokens(result.usage):,} tokens · "
        f"{plural(result.subcalls, 'sub-call')} · {cost_text(result.cost_usd)} · "
        f"{result.duration_s:.1f}s · notebook: {result.notebook}"
    )
