"""The one reader of run notebooks: load and check a file, then read it as typed records."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import nbformat

from ..errors import NotebookFormatError
from ..types import Usage
from .format import FORMAT, SETUP_TAG, step_prose
from .records import CodeCellRecord, RunRecord, StepRecord, SubcallRecord
from .writer import _reason

__all__ = ["RunNotebook", "load", "read"]


def load(path: str | os.PathLike[str]) -> nbformat.NotebookNode:
    """Read a run notebook and check that it is valid nbformat 4 with a readable ``metadata.rlm``.

    Raises:
        NotebookFormatError: the file cannot be read, is not a notebook, is not a run notebook,
            or was written by a newer rlm-kernel.
    """
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise NotebookFormatError(f"cannot read run notebook {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise NotebookFormatError(f"{path} is not an rlm-kernel run notebook: not UTF-8") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise NotebookFormatError(
            f"{path} is not an rlm-kernel run notebook: invalid JSON at line {e.lineno}, "
            f"column {e.colno} ({e.msg})"
        ) from e
    if not isinstance(data, dict) or data.get("nbformat") != 4:
        raise NotebookFormatError(
            f"{path} is not an rlm-kernel run notebook: not an nbformat 4 notebook"
        )
    try:
        # Validate the file's own structure first: converting a malformed one fails obscurely.
        nbformat.validate(data)
        nb = nbformat.v4.to_notebook_json(data)
    except (nbformat.ValidationError, LookupError, TypeError, AttributeError) as e:
        raise NotebookFormatError(
            f"{path} is not an rlm-kernel run notebook: invalid notebook: {_reason(e)}"
        ) from e
    meta = nb.metadata.get("rlm")
    if not isinstance(meta, dict):
        raise NotebookFormatError(f"{path} is not an rlm-kernel run notebook: no metadata.rlm")
    fmt = meta.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise NotebookFormatError(
            f"{path} is not an rlm-kernel run notebook: metadata.rlm.format is {fmt!r}"
        )
    if fmt > FORMAT:
        raise NotebookFormatError(
            f"{path} is not an rlm-kernel run notebook this version can read: it is format {fmt}, "
            f"this rlm-kernel reads format {FORMAT} and older; upgrade rlm-kernel to open it"
        )
    return nb


@dataclasses.dataclass
class RunNotebook:
    """A run notebook read from disk, with typed access to what it records.

    Attributes:
        path: the file.
        nb: the validated notebook (read it; write copies through ``record.write_notebook``).
        run: ``metadata.rlm`` as a :class:`RunRecord`.
        steps: every step, in step order, each with its code cells.
    """

    path: pathlib.Path
    nb: nbformat.NotebookNode
    run: RunRecord
    steps: list[StepRecord]

    @property
    def code_cells(self) -> list[CodeCellRecord]:
        """Every recorded code cell, in notebook order."""
        return [cell for step in self.steps for cell in step.code]

    def subcalls(self) -> Iterator[tuple[CodeCellRecord, SubcallRecord]]:
        """Every recorded sub-call with the cell that made it, in notebook order."""
        for cell in self.code_cells:
            for sub in cell.subcalls:
                yield cell, sub

    def children(self) -> list[tuple[CodeCellRecord, SubcallRecord, pathlib.Path]]:
        """The child runs this run started: cell, sub-call and the child notebook's path."""
        return [
            (cell, sub, (self.path.parent / sub.child))
            for cell, sub in self.subcalls()
            if sub.kind == "rlm" and sub.child
        ]

    def parent_path(self) -> pathlib.Path | None:
        """The parent run's notebook (of a child run or a fork), if it records one."""
        parent = self.run.parent
        return self.path.parent / parent.notebook if parent is not None else None

    @property
    def setup_source(self) -> str | None:
        """The setup cell's source, if the notebook has one."""
        for cell in self.nb.cells:
            if SETUP_TAG in cell.get("metadata", {}).get("tags", []):
                return str(cell.source)
        return None

    def last_reply(self) -> str | None:
        """The model's last recorded reply."""
        replies = [s.raw for s in self.steps if s.has_reply]
        return replies[-1] if replies else None


def read(path: str | os.PathLike[str]) -> RunNotebook:
    """Load a run notebook and read it as records.

    Raises:
        NotebookFormatError: the file is not a run notebook this version can read.
    """
    nb = load(path)
    return from_notebook(nb, path)


def from_notebook(nb: nbformat.NotebookNode, path: str | os.PathLike[str]) -> RunNotebook:
    """Read an already loaded run notebook as records (``path`` is where it lives)."""
    try:
        run = RunRecord.from_metadata(nb.metadata.rlm)
        steps = _steps(nb)
    except (TypeError, ValueError, KeyError) as e:
        raise NotebookFormatError(
            f"{path} is not an rlm-kernel run notebook: its records cannot be read ({e})"
        ) from e
    return RunNotebook(pathlib.Path(path), nb, run, steps)


def _steps(nb: nbformat.NotebookNode) -> list[StepRecord]:
    by_step: dict[int, StepRecord] = {}
    for cell in nb.cells:
        rlm = cell.get("metadata", {}).get("rlm")
        if not isinstance(rlm, dict) or not isinstance(rlm.get("step"), int):
            continue
        k = rlm["step"]
        step = by_step.setdefault(k, StepRecord(step=k, has_reply=False))
        if cell.cell_type == "markdown":
            extra = {key: v for key, v in rlm.items() if key not in _STEP_KEYS}
            step.raw = str(rlm.get("raw") or "")
            step.prose = step_prose(str(cell.source))
            step.usage = _usage(rlm.get("usage"))
            step.latency_s = float(rlm.get("latency_s") or 0.0)
            step.extra = extra
            step.has_reply = True
        elif cell.cell_type == "code":
            step.code.append(CodeCellRecord.from_cell(cell))
    return [by_step[k] for k in sorted(by_step)]


_STEP_KEYS = frozenset({"step", "role", "raw", "usage", "latency_s"})


def _usage(value: Any) -> Usage:
    return Usage.from_dict(value if isinstance(value, dict) else None)
