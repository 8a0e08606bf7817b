"""The one writer of run notebooks: the step-by-step recorder and whole-notebook writes.

A run is recorded as a valid nbformat 4 notebook, rewritten atomically after every step, so a
crash leaves a complete earlier step on disk (the run loop saves on a background thread, so the
step just taken may be the one missing; the end of a run waits for the disk). Cells, in order: a
markdown summary (tag ``rlm-summary``), a setup cell that replays the run (tag ``rlm-setup``),
then per step a markdown cell with the model's text (tag ``rlm-step``) and one code cell per code
block, and finally the answer (tag ``rlm-answer``). Run-level data lives under the notebook's
``metadata.rlm``.

Saving stays cheap however long the run: each cell is serialized once, when it is added, and a save
only re-serializes the summary cell and the notebook metadata, then joins the cached bytes. The
result is byte for byte what ``nbformat.write`` would produce for the same notebook.

Whole notebooks (replayed copies, bundles, moved runs) go through :func:`write_notebook`, which
validates and writes atomically too, after :func:`~.paths.relocate` has rewritten the paths a
notebook holds relative to itself. What a new run's ``metadata.rlm`` starts as is :mod:`.meta`.
"""

from __future__ import annotations

import bisect
import copy
import json
import os
import pathlib
import platform
from collections.abc import Mapping, Sequence
from typing import Any

import nbformat
from nbformat.v4.nbjson import BytesEncoder
from nbformat.v4.rwbase import split_lines

from ..errors import NotebookFormatError, OutputPathError
from ..types import Usage
from . import format as fmt
from .atomic import WriteBehind, atomic_write
from .meta import default_meta, duration, fill_defaults, now, to_plain
from .paths import rebase, relocate
from .records import SubcallRecord

__all__ = ["Recorder", "rebase", "relocate", "write_notebook"]

_KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
# Keys nbformat drops from the notebook metadata when writing.
_TRANSIENT_METADATA = ("orig_nbformat", "orig_nbformat_minor", "signature")


class Recorder:
    """Builds a run notebook step by step and writes it atomically after every step.

    The notebook is written once on creation (status ``running``), again on every :meth:`save`,
    and a last time by :meth:`finish`. Update :attr:`meta` (the live ``metadata.rlm``) and call
    :meth:`save` to record run-level changes; the summary cell is rebuilt from it on each save.

    Attributes:
        path: where the notebook is written.
        meta: the live ``metadata.rlm``; change it, then call :meth:`save`.
        nb: the notebook being built; read it, but change it only through this class.
    """

    def __init__(self, path: str | os.PathLike[str], meta: Mapping[str, Any]) -> None:
        """Start a run notebook at ``path`` and write it.

        Args:
            path: the ``.ipynb`` file to write; missing parent folders are created.
            meta: the initial ``metadata.rlm``; missing keys get defaults and ``format`` is
                always :data:`FORMAT`.

        Raises:
            OutputPathError: the notebook cannot be written at ``path``.
        """
        self.path = pathlib.Path(path)
        meta = copy.deepcopy(dict(meta))
        to_plain(meta)
        fill_defaults(meta, default_meta())
        meta["format"] = fmt.FORMAT
        self.meta: dict[str, Any] = nbformat.from_dict(meta)

        summary = nbformat.v4.new_markdown_cell(
            source="", id=fmt.SUMMARY_CELL_ID, metadata={"tags": [fmt.SUMMARY_TAG]}
        )
        setup = nbformat.v4.new_code_cell(
            source=fmt.setup_source(self.path.name),
            id=fmt.SETUP_CELL_ID,
            metadata={"tags": [fmt.SETUP_TAG]},
        )
        self.nb = nbformat.v4.new_notebook(
            cells=[summary, setup],
            metadata={
                "kernelspec": dict(_KERNELSPEC),
                "language_info": {
                    "codemirror_mode": {"name": "ipython", "version": 3},
                    "file_extension": ".py",
                    "mimetype": "text/x-python",
                    "name": "python",
                    "nbconvert_exporter": "python",
                    "pygments_lexer": "ipython3",
                    "version": platform.python_version(),
                },
            },
        )
        self.nb.metadata["rlm"] = self.meta
        # Cached on-disk JSON of every cell, aligned with nb.cells and each led by the comma that
        # separates it from the previous cell; the summary (index 0) is re-serialized at each
        # save, so its slot is a placeholder.
        self._cell_json: list[bytes] = [b"", b",\n" + _cell_json(setup)]
        self._summary_json = _split_around_source(summary)
        self._index = {summary.id: 0, setup.id: 1}  # cell id -> position in nb.cells
        self._unsaved = 1  # cells at the end of nb.cells not yet validated and written
        self._steps: dict[int, fmt.StepStats] = {}
        # The steps table of the summary, one row per step in step order, kept both as markdown
        # and as JSON-encoded source lines so a save joins them instead of re-encoding the table.
        self._row_steps: list[int] = []
        self._row_text: list[str] = []
        self._row_json: list[bytes] = []
        self._finished = False
        self._behind = WriteBehind(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.save()
        except OSError as e:
            raise OutputPathError(
                f"cannot write the run notebook {self.path}: {e.strerror or e}"
            ) from e

    def add_step(
        self,
        *,
        step: int,
        markdown: str,
        raw: str,
        usage: Mapping[str, Any] | Usage,
        latency_s: float,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Append the markdown cell of one model step (not written until :meth:`save`).

        Args:
            step: the step number, from 1.
            markdown: the model's text as shown in the notebook (usually without its code).
            raw: the model's full reply, kept in the cell metadata for replay.
            usage: token counts of the root-model call.
            latency_s: seconds the root-model call took.
            extra: more keys for the cell's ``metadata.rlm``.
        """
        rlm = {"step": step, "role": "model", "raw": raw, "usage": usage, "latency_s": latency_s}
        rlm.update(extra or {})
        cell = self._new_cell(
            "markdown",
            cell_id=f"step-{step}",
            source=fmt.step_markdown(step, markdown),
            metadata={"tags": [fmt.STEP_TAG], "rlm": rlm},
        )
        self._append(cell)
        stats = self._stats(step)
        stats.latency_s = latency_s
        self._update_row(stats)

    def add_code(
        self,
        *,
        step: int,
        block: int,
        source: str,
        outputs: Sequence[Mapping[str, Any]],
        execution_count: int | None,
        exec: Mapping[str, Any],
        subcalls: Sequence[Mapping[str, Any] | SubcallRecord],
        tags: Sequence[str] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Append the code cell of one code block with its outputs (not written until save).

        Args:
            step: the step the block belongs to.
            block: the block's number within the step, from 1.
            source: the code that ran.
            outputs: nbformat outputs (e.g. from ``nbformat.v4.output_from_msg``), full.
            execution_count: the kernel's execution count, or ``None``.
            exec: ``{status, duration_s, output_chars, shown}`` of the execution.
            subcalls: the sub-calls the block made (dicts or ``SubcallRecord``).
            tags: tags besides ``rlm-code``, which every code cell carries.
            extra: more keys for the cell's ``metadata.rlm``.
        """
        rlm = {"step": step, "block": block, "exec": exec, "subcalls": list(subcalls)}
        rlm.update(extra or {})
        cell_tags = [fmt.CODE_TAG, *(t for t in tags if t != fmt.CODE_TAG)]
        cell = self._new_cell(
            "code",
            cell_id=f"step-{step}-code-{block}",
            source=source,
            outputs=[dict(o) for o in outputs],
            execution_count=execution_count,
            metadata={"tags": cell_tags, "rlm": rlm},
        )
        self._append(cell)
        stats = self._stats(step)
        stats.statuses.append(str(cell.metadata.rlm["exec"].get("status", "?")))
        stats.subcalls += len(subcalls)
        self._update_row(stats)

    def update_subcalls(
        self, cell_id: str, subcalls: Sequence[Mapping[str, Any] | SubcallRecord]
    ) -> bool:
        """Replace the sub-calls of a code cell already recorded (not written until save).

        Sub-calls can change after their cell was recorded: one still running when the cell
        ended (a background thread) gets its answer, or is cancelled, later.

        Returns:
            Whether the notebook has that cell.
        """
        index = self._index.get(cell_id)
        if index is None or self._finished:
            return False
        cell = self.nb.cells[index]
        before = len(cell.metadata.rlm.subcalls)
        cell.metadata.rlm.subcalls = [nbformat.from_dict(_plain_record(s)) for s in subcalls]
        self._cell_json[index] = b",\n" + _cell_json(cell)
        stats = self._stats(int(cell.metadata.rlm.step))
        stats.subcalls += len(subcalls) - before
        self._update_row(stats)
        return True

    def reject_answer(self, *, step: int, value: str, problems: Sequence[str]) -> None:
        """Record that a step's final value did not match the answer schema (until save).

        The step's cell keeps ``answer_rejected {value, problems}`` in its ``metadata.rlm``
        (what a fork tells the model again), and a note after the step shows it to readers.
        """
        rejected = {"value": value, "problems": list(problems)}
        index = self._index.get(f"step-{step}")
        if index is not None:
            cell = self.nb.cells[index]
            cell.metadata.rlm["answer_rejected"] = nbformat.from_dict(rejected)
            self._cell_json[index] = b",\n" + _cell_json(cell)
        note = self._new_cell(
            "markdown",
            cell_id=f"step-{step}-rejected",
            source=fmt.rejected_markdown(step, value, list(problems)),
            metadata={"tags": [fmt.REJECTED_TAG]},
        )
        self._append(note)

    def save(self, *, wait: bool = True) -> None:
        """Validate what changed since the last save and write the notebook atomically.

        Args:
            wait: write before returning. With ``wait=False`` the bytes are prepared here and
                written on a background thread, so that a step does not wait for the disk; a
                later save replaces a write not yet started (the newest version wins), and
                :meth:`flush` (or :meth:`finish`) waits for it.

        Raises:
            NotebookFormatError: the notebook would not be valid nbformat 4.
            OSError: the file could not be written (with ``wait=False``: the previous background
                write failed); the previous version is left intact, and a later save writes
                everything again.
        """
        self._write(validate_all=False, wait=wait)

    def flush(self) -> None:
        """Wait until every background save is on disk.

        Raises:
            OSError: a background write failed; the previous version is left intact.
            TimeoutError: the disk took longer than :data:`~.atomic.WRITE_DEADLINE_S`.
        """
        self._behind.flush()

    def finish(
        self,
        *,
        status: str,
        stop_reason: str | None,
        answer: str | None,
        error: str | None = None,
    ) -> None:
        """Record how the run ended, append the answer cell, validate everything and write.

        Args:
            status: one of ``answered``, ``no_answer``, ``error``, ``interrupted``.
            stop_reason: why the loop stopped (``final``, ``max_steps``, ...), or ``None``.
            answer: the final answer, or ``None``.
            error: what went wrong, for runs that failed.
        """
        if self._finished:
            raise RuntimeError(f"the run recorded in {self.path} is already finished")
        if status not in fmt.FINAL_STATUSES:
            raise ValueError(
                f"status must be one of {', '.join(fmt.FINAL_STATUSES)}, not {status!r}"
            )
        finished = now()
        self.meta.update(
            status=status,
            stop_reason=stop_reason,
            answer=answer,
            error=error,
            finished=finished,
            duration_s=duration(self.meta.get("started"), finished),
        )
        cell = self._new_cell(
            "markdown",
            cell_id=fmt.ANSWER_CELL_ID,
            source=fmt.answer_source(answer, status, stop_reason, error),
            metadata={"tags": [fmt.ANSWER_TAG]},
        )
        self._append(cell)
        self._finished = True
        self._write(validate_all=True)

    # -- internals ------------------------------------------------------------------------------

    def _new_cell(self, cell_type: str, *, cell_id: str, **fields: Any) -> nbformat.NotebookNode:
        if self._finished:
            raise RuntimeError(f"cannot add cells: the run in {self.path} is already finished")
        if cell_id in self._index:
            raise ValueError(f"cell {cell_id!r} is already in the notebook")
        # Copy first: the cell must not share containers with the caller, whose later changes
        # would otherwise go unseen by the cached JSON.
        fields = {k: nbformat.from_dict(v) for k, v in fields.items()}
        to_plain(fields)
        cell = nbformat.NotebookNode(cell_type=cell_type, id=cell_id, metadata={}, source="")
        if cell_type == "code":
            cell.update(outputs=[], execution_count=None)
        cell.update(fields)
        # One cell checked as a whole notebook: nbformat validates a notebook with
        # fastjsonschema, while its cell factories (a schema reference) fall back to the much
        # slower jsonschema. This runs on every step.
        try:
            nbformat.validate(_skeleton(self.nb, [cell], metadata={}))
        except nbformat.ValidationError as e:
            raise NotebookFormatError(
                f"cell {cell_id} would make {self.path} an invalid notebook: {_reason(e)}"
            ) from e
        return cell

    def _append(self, cell: nbformat.NotebookNode) -> None:
        # Serializing here, once, also rejects content that cannot be written (e.g. a value that
        # is not JSON) at the call that brought it, not at some later save.
        try:
            data = b",\n" + _cell_json(cell)
        except (TypeError, ValueError) as e:
            raise NotebookFormatError(
                f"cell {cell.id} cannot be written to {self.path}: {e}"
            ) from e
        self.nb.cells.append(cell)
        self._cell_json.append(data)
        self._index[cell.id] = len(self.nb.cells) - 1
        self._unsaved += 1

    def _stats(self, step: int) -> fmt.StepStats:
        if step not in self._steps:
            self._steps[step] = fmt.StepStats(step)
        return self._steps[step]

    def _update_row(self, stats: fmt.StepStats) -> None:
        line = stats.render()
        i = bisect.bisect_left(self._row_steps, stats.step)
        if i < len(self._row_steps) and self._row_steps[i] == stats.step:
            self._row_text[i] = line
            self._row_json[i] = _encode(line)
        else:
            self._row_steps.insert(i, stats.step)
            self._row_text.insert(i, line)
            self._row_json.insert(i, _encode(line))

    def _write(self, *, validate_all: bool, wait: bool = True) -> None:
        if not isinstance(self.meta, nbformat.NotebookNode):
            self.meta = nbformat.from_dict(self.meta)
        self.meta["format"] = fmt.FORMAT
        to_plain(self.meta)
        self.nb.metadata["rlm"] = self.meta
        summary = self.nb.cells[0]
        head = fmt.summary_head(self.meta, has_steps=bool(self._row_steps))
        summary.source = head + "".join(self._row_text)
        if validate_all:
            checked = self.nb
        else:
            # New cells were validated when they were added (see _new_cell), so what is left
            # to check is what changed since: the summary and the metadata.
            checked = _skeleton(self.nb, [summary], metadata=self.nb.metadata)
        try:
            nbformat.validate(checked)
        except nbformat.ValidationError as e:
            raise NotebookFormatError(
                f"refusing to write {self.path}: it would not be a valid notebook: {_reason(e)}"
            ) from e
        try:
            # The table grows with the run, so its rows are JSON-encoded once and reused; the
            # cached cell text around the source list never changes.
            lines = [_encode(line) for line in head.splitlines(True)]
            lines += self._row_json
            self._cell_json[0] = (
                self._summary_json[0] + _json_lines(lines, depth=4) + self._summary_json[1]
            )
            metadata = {k: v for k, v in self.nb.metadata.items() if k not in _TRANSIENT_METADATA}
            metadata_json = _dumps(metadata).replace("\n", "\n ")
        except (TypeError, ValueError) as e:
            raise NotebookFormatError(
                f"metadata.rlm of {self.path} cannot be written as JSON: {e}"
            ) from e
        tail = (
            b'\n ],\n "metadata": ',
            metadata_json.encode("utf-8"),
            f',\n "nbformat": {self.nb.nbformat},\n'.encode(),
            f' "nbformat_minor": {self.nb.nbformat_minor}\n}}\n'.encode(),
        )
        pieces = [b'{\n "cells": [\n', *self._cell_json, *tail]
        if wait:
            # A background write still in flight must not land after this newer version.
            try:
                self._behind.flush()
            except TimeoutError:
                raise
            except OSError:
                pass  # this version is written whole now, or fails with its own error
            atomic_write(self.path, pieces)
        else:
            self._behind.submit(pieces)
        self._unsaved = 0


def write_notebook(nb: nbformat.NotebookNode, path: str | os.PathLike[str]) -> pathlib.Path:
    """Validate a whole run notebook and write it atomically (temporary file, then rename).

    Raises:
        NotebookFormatError: it would not be a valid notebook; nothing is written.
        OutputPathError: the folder cannot be written.
    """
    path = pathlib.Path(path)
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as e:
        raise NotebookFormatError(f"{path} would not be a valid notebook: {_reason(e)}") from e
    text = nbformat.writes(nb)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, [text.encode("utf-8")])
    except OSError as e:
        raise OutputPathError(f"cannot write the notebook {path}: {e.strerror or e}") from e
    return path


def _plain_record(record: Mapping[str, Any] | SubcallRecord) -> dict[str, Any]:
    if isinstance(record, SubcallRecord):
        return record.to_metadata()
    data = dict(record)
    to_plain(data)
    return data


# -- serialization -------------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    # The options nbformat's JSON writer uses, so cached pieces join into identical bytes.
    return json.dumps(
        value,
        cls=BytesEncoder,
        indent=1,
        sort_keys=True,
        separators=(",", ": "),
        ensure_ascii=False,
    )


def _cell_json(cell: nbformat.NotebookNode) -> bytes:
    """One cell as it appears inside the ``cells`` list of the file (two levels deep)."""
    # from_dict copies every container, so splitting lines leaves the in-memory cell alone.
    holder = nbformat.from_dict({"cells": [cell], "metadata": {}})
    disk = split_lines(holder).cells[0]
    disk.metadata.pop("trusted", None)
    return ("  " + _dumps(disk).replace("\n", "\n  ")).encode("utf-8")


def _encode(line: str) -> bytes:
    return json.encoder.encode_basestring(line).encode("utf-8")


def _json_lines(encoded: Sequence[bytes], depth: int) -> bytes:
    """A JSON list of already-encoded strings, laid out as ``json.dumps(indent=1)`` would."""
    if not encoded:
        return b"[]"
    pad = b"\n" + b" " * depth
    return b"[" + pad + (b"," + pad).join(encoded) + b"\n" + b" " * (depth - 1) + b"]"


def _split_around_source(cell: nbformat.NotebookNode) -> tuple[bytes, bytes]:
    """The serialized cell before and after its source list, which the caller fills in."""
    # A markdown cell without attachments: its source is the only field nbformat splits.
    marker = "\x00source\x00"
    text = ("  " + _dumps({**cell, "source": marker}).replace("\n", "\n  ")).encode("utf-8")
    before, after = text.split(_encode(marker), 1)
    return before, after


def _skeleton(nb: Any, cells: list[Any], *, metadata: Any) -> nbformat.NotebookNode:
    """A notebook of ``nb``'s version holding only ``cells``, for validating part of it."""
    return nbformat.NotebookNode(
        nbformat=nb.nbformat, nbformat_minor=nb.nbformat_minor, metadata=metadata, cells=cells
    )


def _reason(error: Exception) -> str:
    return str(getattr(error, "message", None) or error).splitlines()[0]
