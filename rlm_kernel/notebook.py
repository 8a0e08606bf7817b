"""The run notebook (format 1): the only module that reads or writes it.

A run is recorded as a valid nbformat 4 notebook, rewritten atomically after every step, so a crash
leaves the last complete step on disk. Cells, in order: a markdown summary (tag ``rlm-summary``),
a setup cell that replays the run (tag ``rlm-setup``), then per step a markdown cell with the
model's text (tag ``rlm-step``) and one code cell per code block, and finally the answer (tag
``rlm-answer``). Run-level data lives under the notebook's ``metadata.rlm``.

Saving stays cheap however long the run: each cell is serialized once, when it is added, and a save
only re-serializes the summary cell and the notebook metadata, then joins the cached bytes. The
result is byte for byte what ``nbformat.write`` would produce for the same notebook.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import dataclasses
import datetime as dt
import functools
import importlib.metadata
import itertools
import json
import os
import pathlib
import platform
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import nbformat
from nbformat.v4.nbjson import BytesEncoder
from nbformat.v4.rwbase import split_lines

from .errors import NotebookFormatError, OutputPathError
from .types import SubcallRecord, Usage

FORMAT = 1

SUMMARY_TAG = "rlm-summary"
SETUP_TAG = "rlm-setup"
STEP_TAG = "rlm-step"
CODE_TAG = "rlm-code"
ANSWER_TAG = "rlm-answer"

FINAL_STATUSES = ("answered", "no_answer", "error", "interrupted")

_SETUP_COMMENT = (
    "# Replays this run without an API key: loads `context` and answers llm_query "
    "from the recorded responses."
)
_KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
# Keys nbformat drops from the notebook metadata when writing.
_TRANSIENT_METADATA = ("orig_nbformat", "orig_nbformat_minor", "signature")
_VERSIONED = (
    ("rlm_kernel", "rlm-kernel"),
    ("ipykernel", "ipykernel"),
    ("jupyter_client", "jupyter_client"),
    ("nbformat", "nbformat"),
    ("anthropic", "anthropic"),
    ("openai", "openai"),
)
_PLAIN_ARG = re.compile(r"^[\w.+@=-]+$")


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
        _to_plain(meta)
        _fill_defaults(meta, _default_meta())
        meta["format"] = FORMAT
        self.meta: dict[str, Any] = nbformat.from_dict(meta)

        summary = nbformat.v4.new_markdown_cell(
            source="", id="rlm-summary", metadata={"tags": [SUMMARY_TAG]}
        )
        setup = nbformat.v4.new_code_cell(
            source=f"{_SETUP_COMMENT}\n%load_ext rlm_kernel\n%rlm_replay {_magic_arg(self.path)}",
            id="rlm-setup",
            metadata={"tags": [SETUP_TAG]},
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
        self._ids = {summary.id, setup.id}
        self._unsaved = 1  # cells at the end of nb.cells not yet validated and written
        self._steps: dict[int, _StepStats] = {}
        # The steps table of the summary, one row per step in step order, kept both as markdown
        # and as JSON-encoded source lines so a save joins them instead of re-encoding the table.
        self._row_steps: list[int] = []
        self._row_text: list[str] = []
        self._row_json: list[bytes] = []
        self._finished = False
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
            source=f"### Step {step}\n\n{markdown}",
            metadata={"tags": [STEP_TAG], "rlm": rlm},
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
        cell_tags = [CODE_TAG, *(t for t in tags if t != CODE_TAG)]
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

    def save(self) -> None:
        """Validate what changed since the last save and write the notebook atomically.

        Raises:
            NotebookFormatError: the notebook would not be valid nbformat 4.
            OSError: the file could not be written; the previous version is left intact.
        """
        self._write(validate_all=False)

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
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {', '.join(FINAL_STATUSES)}, not {status!r}")
        finished = _now()
        self.meta.update(
            status=status,
            stop_reason=stop_reason,
            answer=answer,
            error=error,
            finished=finished,
            duration_s=_duration(self.meta.get("started"), finished),
        )
        cell = self._new_cell(
            "markdown",
            cell_id="rlm-answer",
            source=_answer_source(answer, status, stop_reason, error),
            metadata={"tags": [ANSWER_TAG]},
        )
        self._append(cell)
        self._finished = True
        self._write(validate_all=True)

    # -- internals ------------------------------------------------------------------------------

    def _new_cell(self, cell_type: str, *, cell_id: str, **fields: Any) -> nbformat.NotebookNode:
        if self._finished:
            raise RuntimeError(f"cannot add cells: the run in {self.path} is already finished")
        if cell_id in self._ids:
            raise ValueError(f"cell {cell_id!r} is already in the notebook")
        # Copy first: the cell must not share containers with the caller, whose later changes
        # would otherwise go unseen by the cached JSON.
        fields = {k: nbformat.from_dict(v) for k, v in fields.items()}
        _to_plain(fields)
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
        self._ids.add(cell.id)
        self._unsaved += 1

    def _stats(self, step: int) -> _StepStats:
        if step not in self._steps:
            self._steps[step] = _StepStats(step)
        return self._steps[step]

    def _update_row(self, stats: _StepStats) -> None:
        line = stats.render()
        i = bisect.bisect_left(self._row_steps, stats.step)
        if i < len(self._row_steps) and self._row_steps[i] == stats.step:
            self._row_text[i] = line
            self._row_json[i] = _encode(line)
        else:
            self._row_steps.insert(i, stats.step)
            self._row_text.insert(i, line)
            self._row_json.insert(i, _encode(line))

    def _write(self, *, validate_all: bool) -> None:
        if not isinstance(self.meta, nbformat.NotebookNode):
            self.meta = nbformat.from_dict(self.meta)
        self.meta["format"] = FORMAT
        _to_plain(self.meta)
        self.nb.metadata["rlm"] = self.meta
        summary = self.nb.cells[0]
        head = _summary_head(self.meta, has_steps=bool(self._row_steps))
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
        pieces = itertools.chain((b'{\n "cells": [\n',), self._cell_json, tail)
        _atomic_write(self.path, pieces)
        self._unsaved = 0


class _StepStats:
    """What the summary table shows for one step."""

    __slots__ = ("latency_s", "statuses", "step", "subcalls")

    def __init__(self, step: int) -> None:
        self.step = step
        self.latency_s: float | None = None
        self.statuses: list[str] = []
        self.subcalls = 0

    def render(self) -> str:
        """The step's row of the summary table, newline included."""
        latency = "—" if self.latency_s is None else f"{self.latency_s:.1f} s"
        counts: dict[str, int] = {}
        for status in self.statuses:
            counts[status] = counts.get(status, 0) + 1
        exec_text = ", ".join(s if n == 1 else f"{s} ×{n}" for s, n in counts.items())
        cells = [str(self.step), str(len(self.statuses)), exec_text or "—", str(self.subcalls)]
        # _table_cell folds every line break, so the row is exactly one source line.
        return "| " + " | ".join(_table_cell(c) for c in [*cells, latency]) + " |\n"


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


def steps(nb: nbformat.NotebookNode) -> list[dict[str, Any]]:
    """Group a run notebook's cells by step, in step order.

    Returns:
        One dict per step: ``{"step": k, "markdown_cell": cell or None, "code_cells": [...]}``,
        the code cells in notebook order.
    """
    by_step: dict[int, dict[str, Any]] = {}
    for cell in nb.cells:
        rlm = cell.get("metadata", {}).get("rlm")
        if not isinstance(rlm, dict) or not isinstance(rlm.get("step"), int):
            continue
        k = rlm["step"]
        entry = by_step.setdefault(k, {"step": k, "markdown_cell": None, "code_cells": []})
        if cell.cell_type == "markdown":
            entry["markdown_cell"] = cell
        elif cell.cell_type == "code":
            entry["code_cells"].append(cell)
    return [by_step[k] for k in sorted(by_step)]


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


def _atomic_write(path: pathlib.Path, pieces: Iterable[bytes]) -> None:
    """Write ``pieces`` to ``path`` through a temporary file in the same folder and a rename."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        # os.open applies the umask, so the notebook gets the usual permissions of a new file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with open(fd, "wb") as f:
            f.write(b"".join(pieces))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- metadata ------------------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _duration(started: Any, finished: str) -> float | None:
    try:
        start = dt.datetime.fromisoformat(str(started))
    except ValueError:
        return None
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.timezone.utc)
    return round((dt.datetime.fromisoformat(finished) - start).total_seconds(), 3)


@functools.cache
def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for key, dist in _VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[key] = importlib.metadata.version(dist)
    return versions


def _default_meta() -> dict[str, Any]:
    return {
        "format": FORMAT,
        "run_id": uuid.uuid4().hex,
        "status": "running",
        "stop_reason": None,
        "question": "",
        "answer": None,
        "models": {"root": None, "sub": None},
        "limits": {},
        "system_prompt": None,
        "context": {
            "type": None,
            "chars": None,
            "bytes": None,
            "sha256": None,
            "path": None,
            "preview": None,
        },
        "usage": {"root": Usage().to_dict(), "sub": Usage().to_dict()},
        "cost_usd": 0.0,
        "steps": 0,
        "subcalls": 0,
        "started": _now(),
        "finished": None,
        "duration_s": None,
        "versions": dict(_versions()),
        "parent": None,
        "error": None,
    }


def _fill_defaults(target: dict[str, Any], defaults: Mapping[str, Any]) -> None:
    for key, value in defaults.items():
        if key not in target:
            target[key] = value
        elif isinstance(value, dict) and isinstance(target[key], dict):
            _fill_defaults(target[key], value)


def _to_plain(value: Any) -> None:
    """Turn dataclasses (Usage, Limits, SubcallRecord, ...) and tuples into JSON types, in place."""
    items: Any
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, item in list(items):
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            to_dict = getattr(item, "to_dict", None)
            value[key] = item = to_dict() if callable(to_dict) else dataclasses.asdict(item)
        elif isinstance(item, tuple):
            value[key] = item = list(item)
        _to_plain(item)


def _reason(error: Exception) -> str:
    return str(getattr(error, "message", None) or error).splitlines()[0]


def _magic_arg(path: pathlib.Path) -> str:
    name = path.name
    return name if _PLAIN_ARG.match(name) else json.dumps(name, ensure_ascii=False)


# -- markdown ------------------------------------------------------------------------------------


def _escape_html(text: str) -> str:
    # Stray HTML in a question or answer must not swallow the rest of the summary when rendered.
    return text.replace("&", "&amp;").replace("<", "&lt;")


def _quote(text: str) -> str:
    return "\n".join(f"> {line}".rstrip() for line in _escape_html(text).splitlines() or [""])


def _table_cell(text: str, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return _escape_html(text).replace("\\", "\\\\").replace("|", "\\|")


def _tokens(usage: Any) -> str:
    u = Usage.from_dict(usage if isinstance(usage, dict) else None)
    return (
        f"{u.input_tokens:,} in · {u.output_tokens:,} out · "
        f"{u.cache_read_input_tokens:,} cache read · {u.cache_creation_input_tokens:,} cache write "
        f"({u.calls:,} calls)"
    )


def _summary_head(meta: Mapping[str, Any], *, has_steps: bool) -> str:
    """The summary cell up to the rows of its steps table; every line ends with a newline."""
    status = str(meta.get("status"))
    if meta.get("stop_reason"):
        status += f" ({meta['stop_reason']})"
    models = meta.get("models") or {}
    usage = meta.get("usage") or {}
    cost = meta.get("cost_usd")
    if meta.get("duration_s") is not None:
        time_text = f"{meta['duration_s']:.1f} s, started {meta.get('started')}"
    else:
        time_text = f"started {meta.get('started')}, still running"
    rows = [
        ("Status", status),
        ("Models", f"root {models.get('root') or '—'} · sub {models.get('sub') or '—'}"),
        ("Steps", str(meta.get("steps"))),
        ("Sub-calls", str(meta.get("subcalls"))),
        ("Tokens (root)", _tokens(usage.get("root"))),
        ("Tokens (sub)", _tokens(usage.get("sub"))),
        ("Cost", "unknown" if cost is None else f"${cost:.4f}"),
        ("Time", time_text),
    ]
    if meta.get("error"):
        rows.append(("Error", str(meta["error"])))
    parent = meta.get("parent")
    if isinstance(parent, dict):
        rows.append(("Parent", f"{parent.get('notebook')} step {parent.get('step')}"))

    answer = meta.get("answer")
    if answer is not None:
        answer_text = _quote(str(answer))
    elif meta.get("status") == "running":
        answer_text = "_No answer yet: the run is in progress._"
    else:
        answer_text = "_The run ended without an answer._"

    parts = [
        f"## RLM run `{meta.get('run_id')}`",
        "",
        "**Question**",
        "",
        _quote(str(meta.get("question") or "")),
        "",
        "**Answer**",
        "",
        answer_text,
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {_table_cell(value, 200)} |" for name, value in rows),
        "",
        "**Steps**",
        "",
    ]
    if has_steps:
        parts += [
            "| Step | Code blocks | Exec | Sub-calls | Latency |",
            "|---:|---:|---|---:|---:|",
        ]
    else:
        parts.append("_No steps recorded yet._")
    return "\n".join(parts) + "\n"


def _answer_source(
    answer: str | None, status: str, stop_reason: str | None, error: str | None
) -> str:
    if answer is not None:
        return f"## Answer\n\n{answer}"
    why = f"status `{status}`" + (f", stop reason `{stop_reason}`" if stop_reason else "")
    text = f"## Answer\n\n_The run ended without an answer ({why})._"
    if error:
        fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", error)), default=0))
        text += f"\n\n{fence}\n{error}\n{fence}"
    return text
