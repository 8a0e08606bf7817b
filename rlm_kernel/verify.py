"""Check a run notebook against its record: run it again, as *Run All* would, and compare.

:func:`areplay_notebook` (sync twin :func:`replay_notebook`) starts a fresh kernel in the
notebook's folder, runs its setup cell (``%rlm_replay``: the context, and sub-calls answered from
the record, so no key or server is needed) and every recorded code cell, and compares each
cell's outputs with the recorded ones after :func:`normalize_text`, and the answer with the
recorded answer. A run tree is checked notebook by notebook: each child run is replayed from its
own notebook (``shallow=True`` checks the root alone, its children answered from its record).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from .context import resolve_context
from .errors import OutputPathError, UsageError
from .kernel import ExecResult, KernelSession
from .outputs import render_text, strip_ansi
from .parse import final_answer
from .record import (
    SETUP_CELL_ID,
    CodeCellRecord,
    RunNotebook,
    code_cell_id,
    read,
    relocate,
    setup_source,
    write_notebook,
)
from .record.book import preview as _preview
from .replay import finals_of, is_note

__all__ = ["CellReport", "ReplayReport", "areplay_notebook", "normalize_text", "replay_notebook"]

DIFF_LINES = 12
DEFAULT_CELL_TIMEOUT = 300.0
SETUP_TIMEOUT = 120.0

CellResult = Literal["same", "differs", "newly_failing"]


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


_ADDRESS = re.compile(r"\bat 0x[0-9a-fA-F]+\b")
_CELL_REF = re.compile(r"\b(Cell In|Input In) ?\[\d+\]")
_KERNEL_FILE = re.compile(r"ipykernel_\d+[/\\]\d+\.py")
_TIMING_LINE = re.compile(r"^(CPU times:|Wall time:)|per loop \(mean ± std\. dev\. of")
_DURATION = re.compile(r"\d+(?:[.,]\d+)*\s*(?:ns|[µμu]s|ms|s|min|h)\b")


def normalize_text(text: str) -> str:
    """Remove what legitimately changes between two runs of the same cell.

    ANSI escapes; object addresses (``at 0x7f…``); execution counts in traceback headers
    (``Cell In[12]``); the temporary file names ipykernel gives cells (``ipykernel_4242/…py``);
    and the figures of IPython's timing output (``%time``'s ``CPU times:``/``Wall time:`` lines,
    ``%timeit``'s ``… per loop (mean ± std. dev. of …)``).
    """
    text = strip_ansi(text)
    text = _ADDRESS.sub("at 0x…", text)
    text = _CELL_REF.sub(r"\1[…]", text)
    text = _KERNEL_FILE.sub("ipykernel_…/….py", text)
    lines = [
        _DURATION.sub("…", line) if _TIMING_LINE.search(line) else line for line in text.split("\n")
    ]
    return "\n".join(lines)


def _frames_only(output: Mapping[str, Any]) -> Mapping[str, Any]:
    """An error output whose traceback keeps the first line of each entry.

    That is the frame headers (``Cell In[…], line 9``, ``File …:8, in f(x)``) and the exception
    line; the source excerpts IPython prints around each frame vary with its version and
    settings (e.g. how many lines of context a temporary cell file gets).
    """
    if output.get("output_type") != "error":
        return output
    heads = [strip_ansi(str(entry)).split("\n", 1)[0] for entry in output.get("traceback", [])]
    heads = [" ".join(h.split()) for h in heads if h.strip("- ")]
    return {**output, "traceback": heads}


def _compared_text(outputs: Iterable[Mapping[str, Any]]) -> str:
    return normalize_text(render_text([_frames_only(o) for o in outputs if not is_note(o)]))


@dataclasses.dataclass
class CellReport:
    """How one recorded code cell replayed.

    Attributes:
        step: the cell's step.
        block: the cell's block within the step.
        result: ``same``, ``differs``, or ``newly_failing`` (recorded ok, now not).
        diff: a short unified diff of the normalised output text, unless ``same``.
        error: ``ename: evalue`` of a newly failing cell.
        outputs: the replayed outputs.
        execution_count: the replayed execution count.
    """

    step: int
    block: int
    result: CellResult
    diff: str | None = None
    notebook: str | None = None
    error: str | None = None
    outputs: list[Any] = dataclasses.field(default_factory=list, repr=False)
    execution_count: int | None = None

    def render(self) -> str:
        """A few lines for a terminal: the verdict, then the error or the diff, indented."""
        where = f"{self.notebook} " if self.notebook else ""
        head = f"{where}step {self.step}.{self.block}: {self.result.replace('_', ' ')}"
        detail = self.error or self.diff or ""
        return "\n".join([head, *("    " + line for line in detail.splitlines())])

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``step, block, result`` and ``diff``/``error`` when present."""
        data: dict[str, Any] = {"step": self.step, "block": self.block, "result": self.result}
        if self.notebook is not None:
            data["notebook"] = self.notebook
        if self.diff is not None:
            data["diff"] = self.diff
        if self.error is not None:
            data["error"] = self.error
        return data


@dataclasses.dataclass
class ReplayReport:
    """What replaying a run notebook found.

    Attributes:
        notebook: the replayed notebook.
        cells: one report per recorded code cell, in order.
        answer: the answer the replay produced (or took from the record, see ``answer_source``).
        recorded_answer: ``metadata.rlm.answer``.
        answer_source: ``replay`` (FINAL/FINAL_VAR/answer ran), ``record`` (the run ended with a
            plain-text ``FINAL(...)`` line, which no code reproduces) or ``None`` (no answer).
        out: the notebook written with the replayed outputs, if any.
        children: the reports of the child runs' notebooks (a whole tree unless ``shallow``).
    """

    notebook: str
    cells: list[CellReport]
    answer: str | None
    recorded_answer: str | None
    answer_source: Literal["replay", "record"] | None = None
    out: str | None = None
    children: list[ReplayReport] = dataclasses.field(default_factory=list)

    @property
    def own_status(self) -> Literal["reproduced", "differs"]:
        """``reproduced`` when this notebook's cells are the same and its answer matches."""
        same = all(c.result == "same" for c in self.cells)
        return "reproduced" if same and self.answer == self.recorded_answer else "differs"

    @property
    def status(self) -> Literal["reproduced", "differs"]:
        """``reproduced`` when this notebook and every child notebook reproduced."""
        ok = self.own_status == "reproduced" and all(
            c.status == "reproduced" for c in self.children
        )
        return "reproduced" if ok else "differs"

    def walk(self) -> list[ReplayReport]:
        """This report and every child's, depth first."""
        return [self, *(r for child in self.children for r in child.walk())]

    def summary(self) -> str:
        """One line: the status, how many cells are the same, whether the answer matches."""
        same = sum(c.result == "same" for c in self.cells)
        failing = sum(c.result == "newly_failing" for c in self.cells)
        cells = f"{len(self.cells)} cell{'s' * (len(self.cells) != 1)}"
        text = f"{self.own_status}: {same} of {cells} the same"
        if failing:
            text += f", {failing} newly failing"
        if self.answer == self.recorded_answer:
            text += ", the answer matches" if self.answer is not None else ", no answer as recorded"
            if self.answer_source == "record":
                text += " (the run ended with a plain-text FINAL line: taken from the record)"
        else:
            text += f"; the answer differs: replayed {_preview(str(self.answer))}, recorded "
            text += _preview(str(self.recorded_answer))
        text += f"; replayed notebook: {self.out}" if self.out else ""
        if self.children:
            tree = self.walk()[1:]
            bad = [r.notebook for r in tree if r.own_status != "reproduced"]
            text += f"; {len(tree) - len(bad)} of {len(tree)} child notebooks reproduced"
            text += f" (differs: {', '.join(bad)})" if bad else ""
        return text

    def to_dict(self) -> dict[str, Any]:
        """The JSON form printed by ``rlm-kernel replay --json``."""
        return {
            "status": self.status,
            "cells": [c.to_dict() for c in self.cells],
            "answer": self.answer,
            "recorded_answer": self.recorded_answer,
            "answer_source": self.answer_source,
            "notebook": self.notebook,
            "out": self.out,
            "children": [c.to_dict() for c in self.children],
        }


def _diff(recorded: str, replayed: str) -> str:
    lines = list(
        difflib.unified_diff(
            recorded.splitlines(), replayed.splitlines(), "recorded", "replayed", lineterm="", n=1
        )
    )
    if len(lines) > DIFF_LINES:
        lines = [*lines[:DIFF_LINES], f"… ({len(lines) - DIFF_LINES} more diff lines)"]
    return "\n".join(lines)


def _compare(cell: CodeCellRecord, result: ExecResult, notebook: str | None) -> CellReport:
    before = _compared_text(cell.outputs)
    after = _compared_text(result.outputs)
    recorded_status = cell.exec.status
    if recorded_status == "ok" and result.status != "ok":
        kind: CellResult = "newly_failing"
    else:
        kind = "same" if before == after and recorded_status == result.status else "differs"
    error = None
    if kind == "newly_failing":
        ename, evalue = result.error or (result.status, "")
        error = _one_line(f"{ename}: {evalue}", 500)
    return CellReport(
        step=cell.step,
        block=cell.block,
        result=kind,
        diff=None if kind == "same" else _diff(before, after),
        error=error,
        notebook=notebook,
        outputs=result.outputs,
        execution_count=result.execution_count,
    )


def _answer(
    run: RunNotebook, finals: list[str]
) -> tuple[str | None, Literal["replay", "record"] | None]:
    if finals:
        return finals[-1], "replay"  # as in the run, the last value sent is the answer
    recorded = run.run.answer
    raw = run.last_reply()
    found = final_answer(raw) if raw is not None else None
    if recorded is not None and found is not None and found.kind == "FINAL":
        return recorded, "record"  # a plain-text FINAL(...) line: no code cell reproduces it
    return None, None


def _check_out(out: Path, source: Path) -> Path:
    if out.suffix != ".ipynb":
        raise OutputPathError(f"the replayed notebook must end in .ipynb: {out}")
    if out.resolve() == source.resolve():
        raise OutputPathError(f"--out {out} would overwrite the recorded run; choose another file")
    return out


def _write_copy(run: RunNotebook, out: Path, setup: ExecResult, reports: list[CellReport]) -> None:
    """Write the notebook with the replayed outputs to ``out``, still replayable from there."""
    outputs = {code_cell_id(r.step, r.block): (r.outputs, r.execution_count) for r in reports}
    outputs[SETUP_CELL_ID] = (setup.outputs, setup.execution_count)
    write_notebook(relocate(run.nb, run.path, out, outputs=outputs), out)


async def areplay_notebook(
    path: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    kernel_name: str = "python3",
    cell_timeout: float | None = None,
    on_cell: Callable[[CellReport], object] | None = None,
    shallow: bool = False,
    root: str | os.PathLike[str] | None = None,
) -> ReplayReport:
    """Run a recorded notebook again in a fresh kernel and compare it with the record.

    The kernel starts in the notebook's folder (as in Jupyter), runs the setup cell (the
    ``%rlm_replay`` magic, so no API key is needed) and then every recorded code cell in order.
    Then each child run's notebook is replayed the same way, unless ``shallow``.

    Args:
        path: the run notebook.
        out: where to write a copy with the replayed outputs (the root notebook only).
        kernel_name: the kernelspec to run the cells in.
        cell_timeout: seconds per cell (default: the run's own ``cell_timeout``).
        on_cell: called with each :class:`CellReport` as soon as the cell has run.
        shallow: do not replay the child runs' notebooks.
        root: the folder that report names are relative to (default: the notebook's).

    Raises:
        NotebookFormatError: not a readable run notebook.
        ContextError: the context file is missing or altered (and none is embedded).
        UsageError: the setup cell failed, or ``out`` is not a usable notebook path.
    """
    path = Path(path)
    run = read(path)
    resolve_context(run.run.context, path.parent)  # bad input is reported before a kernel starts
    out_path = _check_out(Path(out), path) if out is not None else None
    base = Path(root) if root is not None else path.parent
    name = Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()
    label = None if root is None else name
    timeout = cell_timeout or run.run.limits.get("cell_timeout") or DEFAULT_CELL_TIMEOUT
    reports: list[CellReport] = []
    finals: list[str] = []
    async with KernelSession(kernel_name=kernel_name, cwd=path.parent.resolve()) as ks:
        source = setup_source(path.name, previous=run.setup_source)
        setup = await ks.execute(source, timeout=SETUP_TIMEOUT)
        if setup.status != "ok":
            ename, evalue = setup.error or (setup.status, "")
            raise UsageError(
                f"the replay setup cell of {name} failed: {ename}: {_one_line(evalue, 500)}"
            )
        for cell in run.code_cells:
            result = await ks.execute(cell.source, timeout=timeout, cell_id=cell.cell_id)
            finals += finals_of(result.outputs)
            report = _compare(cell, result, label)
            reports.append(report)
            if on_cell is not None:
                on_cell(report)
    answer, answer_source = _answer(run, finals)
    if out_path is not None:
        _write_copy(run, out_path, setup, reports)
    children: list[ReplayReport] = []
    if not shallow:
        for _cell, _sub, child in run.children():
            children.append(
                await areplay_notebook(
                    child,
                    kernel_name=kernel_name,
                    cell_timeout=cell_timeout,
                    on_cell=on_cell,
                    root=base,
                )
            )
    return ReplayReport(
        notebook=str(path) if root is None else name,
        cells=reports,
        answer=answer,
        recorded_answer=run.run.answer,
        answer_source=answer_source,
        out=str(out_path) if out_path is not None else None,
        children=children,
    )


def replay_notebook(path: str | os.PathLike[str], **kwargs: Any) -> ReplayReport:
    """The sync twin of :func:`areplay_notebook` (also works where an event loop runs)."""
    from jupyter_core.utils import run_sync

    return run_sync(areplay_notebook)(path, **kwargs)
