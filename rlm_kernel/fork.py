"""Forks: a new run that starts as a copy of a recorded one, up to a step, then goes on live.

The steps before the fork are not asked of any model: their recorded code runs again in the new
kernel (to rebuild its state) with every sub-call answered from the parent's recorded-answer book,
exactly as ``%rlm_replay`` answers them, and the conversation is rebuilt from the recorded
replies and what the model was shown. Child runs made by those steps are not run again: their
recorded answers are the answers, and the fork's copied cells link to the parent's children.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from . import prompts
from .context import ContextInput, resolve_context
from .errors import NotebookFormatError, ReplayDiverged, UsageError
from .loop import StepLoop
from .record import (
    CodeCellRecord,
    ParentLink,
    ReplayBook,
    RunNotebook,
    StepRecord,
    read,
    rebase,
)
from .session import Session
from .subcalls import SubcallService

__all__ = ["Fork", "fork_path", "replay_prefix"]


def fork_path(notebook: Path, step: int) -> Path:
    """Where a fork is written by default: ``RUN-from-K.ipynb`` beside ``RUN.ipynb``."""
    return notebook.with_name(f"{notebook.stem}-from-{step}.ipynb")


@dataclasses.dataclass
class Fork:
    """A recorded run that a new run forks from, at ``step``."""

    path: Path
    run: RunNotebook
    step: int
    book: ReplayBook
    context: ContextInput

    @classmethod
    def load(cls, path: Path, step: int) -> Fork:
        """Read the parent run and check the step.

        Raises:
            UsageError: not a run notebook, its context is missing or altered, or ``step`` is
                not one of its steps.
        """
        try:
            run = read(path)
        except NotebookFormatError as e:
            raise UsageError(str(e)) from None
        numbers = [s.step for s in run.steps if s.code or s.has_reply]
        if not numbers or not 1 <= step <= max(numbers):
            last = max(numbers) if numbers else 0
            raise UsageError(f"--from-step must be between 1 and {last} for {path}, not {step}")
        found = resolve_context(run.run.context, path.parent)
        context: ContextInput = found.path if found.path is not None else found.value()
        return cls(path, run, step, ReplayBook.from_run(run), context)

    @property
    def question(self) -> str:
        return self.run.run.question

    @property
    def prefix(self) -> list[StepRecord]:
        """The parent's steps before the fork."""
        return [s for s in self.run.steps if s.step < self.step]

    def default_out(self) -> Path:
        return fork_path(self.path, self.step)

    def parent_link(self, new_notebook: Path) -> ParentLink:
        rel = os.path.relpath(self.path.resolve(), new_notebook.resolve().parent)
        return ParentLink(notebook=Path(rel).as_posix(), run_id=self.run.run.run_id, step=self.step)


async def replay_prefix(
    fork: Fork, loop: StepLoop, service: SubcallService, session: Session
) -> int:
    # The service answers from the book while the prefix runs, so nothing is asked of a model
    # and nothing is charged to the budget.
    """Re-run the parent's steps before the fork in ``session``; return the first live step.

    Raises:
        ReplayDiverged: a recorded cell ended differently, so the kernel's state is not the
            parent's.
    """
    service.book = fork.book
    target = loop.recorder.path
    try:
        for step in fork.prefix:
            if step.has_reply:
                loop.recorder.add_step(
                    step=step.step,
                    markdown=step.prose,
                    raw=step.raw,
                    usage=step.usage.to_dict(),
                    latency_s=step.latency_s,
                    extra=step.extra,
                )
            reports = [await _replay_cell(fork, loop, session, cell, target) for cell in step.code]
            loop.messages.append({"role": "assistant", "content": step.raw or "(empty reply)"})
            feedback = prompts.feedback(
                reports, step=step.step, max_steps=loop.limits.max_steps, question=loop.question
            )
            rejected = step.extra.get("answer_rejected")
            if isinstance(rejected, dict):
                # The model was told its answer did not match the schema: tell it again.
                problems = [str(p) for p in rejected.get("problems") or []]
                feedback = f"{prompts.answer_rejected(problems)}\n\n{feedback}"
            loop.tell(feedback)
            loop.steps = step.step
    finally:
        service.book = None
        service.final_value = None  # an answer the parent gave later does not count here
    loop.save()
    return fork.step


async def _replay_cell(
    fork: Fork, loop: StepLoop, session: Session, cell: CodeCellRecord, target: Path
) -> prompts.BlockReport:
    result = await session.execute(
        cell.source, timeout=loop.budget.cell_timeout(), cell_id=cell.cell_id
    )
    if result.status != cell.exec.status:
        raise ReplayDiverged(
            f"replaying {cell.where} of {fork.path} ended {result.status}, the recorded run "
            f"{cell.exec.status}: the kernel's state cannot be rebuilt"
        )
    subcalls = []
    for sub in cell.subcalls:
        data = sub.to_metadata()
        data["child"] = rebase(sub.child, fork.path, target)  # the parent's child, kept
        subcalls.append(data)
    loop.recorder.add_code(
        step=cell.step,
        block=cell.block,
        source=cell.source,
        outputs=cell.outputs,
        execution_count=cell.execution_count,
        exec=cell.exec.to_metadata(),
        subcalls=subcalls,
        tags=cell.tags,
        extra=cell.extra,
    )
    return prompts.BlockReport(
        status=cell.exec.status, shown=cell.exec.shown, output_chars=cell.exec.output_chars
    )
