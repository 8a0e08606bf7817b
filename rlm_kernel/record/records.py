"""Typed records of a run notebook: the run, a step, a code cell, a sub-call and an error.

Each record turns into the JSON kept under ``metadata.rlm`` (``to_metadata``) and back
(``from_metadata`` / ``from_cell`` / ``from_notebook``). Readers of format 1 are kept here too:
its sub-call errors were ``"Class: message"`` strings, which :meth:`ErrorRecord.from_metadata`
turns into records, so nothing else ever parses them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import SubcallFailed, ToolError, wire_type
from ..types import Usage

__all__ = [
    "ChildSummary",
    "CodeCellRecord",
    "ErrorRecord",
    "ExecRecord",
    "ParentLink",
    "RunRecord",
    "StepRecord",
    "SubcallRecord",
]

SubcallKind = Literal["llm", "rlm", "tool"]
# Format 1 recorded a failure as "Class: message"; these prefixes are the kernel's own classes.
_LEGACY_TYPES = ("BudgetExceeded", "ReplayMiss", "SubcallError", "BridgeError")


@dataclass(frozen=True)
class ErrorRecord:
    """A failure as it crosses the kernel/host line and as the notebook keeps it.

    Attributes:
        type: the wire type, which is also the name of the exception the kernel's code sees
            (``SubcallError``, ``BudgetExceeded``, ``ReplayMiss``, ``SubcallCancelled``, ...).
        message: what the exception says.
        retries: HTTP attempts the model SDK repeated before giving up.
        cause: for a ``ToolError``, the class name of the exception the host tool raised.
    """

    type: str
    message: str
    retries: int = 0
    cause: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorRecord:
        """The record of a host exception, typed by :data:`rlm_kernel.errors.WIRE_TYPES`."""
        if isinstance(exc, SubcallFailed):
            return cls(exc.wire_type, str(exc), exc.retries, exc.cause)
        if isinstance(exc, ToolError):
            return cls("ToolError", str(exc), 0, exc.cause)
        text, name = str(exc), type(exc).__name__
        if wire_type(exc) == "SubcallError" and not _is_ours(exc):
            message = f"{name}: {text}" if text else name  # a foreign exception: keep its class
        else:
            message = text or name
        return cls(wire_type(exc), message, int(getattr(exc, "retries", 0) or 0))

    @classmethod
    def from_metadata(cls, value: Any) -> ErrorRecord | None:
        """Read a recorded error: a format 2 record, or a format 1 ``"Class: message"`` string."""
        if value is None:
            return None
        if isinstance(value, Mapping):
            return cls(
                str(value.get("type") or "SubcallError"),
                str(value.get("message") or ""),
                int(value.get("retries") or 0),
                str(value["cause"]) if value.get("cause") else None,
            )
        text = str(value)
        head, sep, rest = text.partition(": ")
        if sep and head in _LEGACY_TYPES:
            return cls(head, rest)
        return cls("SubcallError", text)

    def to_metadata(self) -> dict[str, Any]:
        """The JSON form ``{type, message, retries}`` (and ``cause`` when there is one)."""
        data: dict[str, Any] = {"type": self.type, "message": self.message, "retries": self.retries}
        if self.cause is not None:
            data["cause"] = self.cause
        return data

    def to_exception(self) -> SubcallFailed:
        """A host exception that travels back to the kernel as this very record."""
        return SubcallFailed(
            self.message, wire_type=self.type, retries=self.retries, cause=self.cause
        )


def _is_ours(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("rlm_kernel")


@dataclass
class SubcallRecord:
    """One sub-call made from a code cell, as stored in the cell's ``metadata.rlm.subcalls``.

    Attributes:
        id: the sub-call's number in its run, from 1.
        kind: ``llm`` (a sub-model call), ``rlm`` (``rlm_query``: a child run, or a sub-model
            call at the maximum depth, which ``note`` says) or ``tool`` (a host function).
        model: the model that answered.
        prompt_sha256: hex SHA-256 of the prompt, what replay matches on.
        prompt_chars: the prompt's length.
        prompt_preview: its first characters.
        response: the answer, or ``None`` when the call failed.
        latency_s: seconds the call took.
        usage: tokens of the call (for a child run: of the whole child tree).
        cost_usd: its cost, ``None`` when unpriced.
        retries: HTTP attempts the SDK repeated.
        error: the failure, or ``None``.
        child: the child run's notebook, relative to this notebook (``kind == "rlm"``).
        stop_reason: why the sub-model stopped (``max_tokens`` means the answer was cut).
        note: what the record should tell a reader (e.g. the depth fallback).
        cell: the id of the cell the call came from, as the kernel sent it.
        cached: answered by the model-call cache (no API call; ``usage`` is the original's).
        count: how many calls the record stands for: the budget's repeated refusals in one
            cell are recorded once, with their number.
    """

    id: int
    kind: SubcallKind
    model: str
    prompt_sha256: str
    prompt_chars: int
    prompt_preview: str
    response: str | None = None
    latency_s: float = 0.0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    retries: int = 0
    error: ErrorRecord | None = None
    child: str | None = None
    stop_reason: str | None = None
    note: str | None = None
    cell: str | None = None
    cached: bool = False
    count: int = 1

    def to_metadata(self) -> dict[str, Any]:
        """The JSON form kept on the cell (``count`` only when it is not 1)."""
        # Spelled out: a batch records thousands of these, and dataclasses.asdict deep-copies.
        data = {
            "id": self.id,
            "kind": self.kind,
            "model": self.model,
            "prompt_sha256": self.prompt_sha256,
            "prompt_chars": self.prompt_chars,
            "prompt_preview": self.prompt_preview,
            "response": self.response,
            "latency_s": self.latency_s,
            "usage": self.usage.to_dict(),
            "cost_usd": self.cost_usd,
            "retries": self.retries,
            "error": self.error.to_metadata() if self.error is not None else None,
            "child": self.child,
            "stop_reason": self.stop_reason,
            "note": self.note,
            "cell": self.cell,
            "cached": self.cached,
        }
        if self.count != 1:
            data["count"] = self.count
        return data

    to_dict = to_metadata

    @classmethod
    def from_metadata(cls, data: Mapping[str, Any]) -> SubcallRecord:
        """Read a recorded sub-call (format 1 or 2)."""
        return cls(
            id=int(data.get("id") or 0),
            kind=data.get("kind") if data.get("kind") in ("rlm", "tool") else "llm",
            model=str(data.get("model") or ""),
            prompt_sha256=str(data.get("prompt_sha256") or ""),
            prompt_chars=int(data.get("prompt_chars") or 0),
            prompt_preview=str(data.get("prompt_preview") or ""),
            response=data.get("response"),
            latency_s=float(data.get("latency_s") or 0.0),
            usage=Usage.from_dict(_dict(data.get("usage"))),
            cost_usd=data.get("cost_usd"),
            retries=int(data.get("retries") or 0),
            error=ErrorRecord.from_metadata(data.get("error")),
            child=data.get("child"),
            stop_reason=data.get("stop_reason"),
            note=data.get("note"),
            cell=data.get("cell"),
            cached=bool(data.get("cached")),
            count=int(data.get("count") or 1),
        )


@dataclass
class ExecRecord:
    """How a code cell ran: ``status`` (``ok|error|timeout|kernel_died|skipped``), its time,
    how many characters it printed, and exactly what the model was shown."""

    status: str
    duration_s: float = 0.0
    output_chars: int = 0
    shown: str = ""

    def to_metadata(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "duration_s": self.duration_s,
            "output_chars": self.output_chars,
            "shown": self.shown,
        }

    @classmethod
    def from_metadata(cls, data: Mapping[str, Any] | None) -> ExecRecord:
        data = data or {}
        return cls(
            status=str(data.get("status") or "ok"),
            duration_s=float(data.get("duration_s") or 0.0),
            output_chars=int(data.get("output_chars") or 0),
            shown=str(data.get("shown") or ""),
        )


@dataclass
class CodeCellRecord:
    """One code block of a step, as a code cell with its outputs.

    Attributes:
        step: the step.
        block: the block's number in the step, from 1.
        source: the code that ran.
        outputs: nbformat outputs, in full (up to the per-cell cap).
        execution_count: the kernel's count, or ``None``.
        exec: how it ran.
        subcalls: the sub-calls it made, in the order they were made.
        tags: cell tags besides ``rlm-code``.
        extra: more keys of the cell's ``metadata.rlm`` (``approval``, ...).
    """

    step: int
    block: int
    source: str
    outputs: list[Any] = field(default_factory=list)
    execution_count: int | None = None
    exec: ExecRecord = field(default_factory=lambda: ExecRecord("ok"))
    subcalls: list[SubcallRecord] = field(default_factory=list)
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cell_id(self) -> str:
        """The notebook cell id, which is also what the kernel sends with its sub-calls."""
        return code_cell_id(self.step, self.block)

    @property
    def where(self) -> str:
        """``step K.B``, for messages."""
        return f"step {self.step}.{self.block}"

    def to_metadata(self) -> dict[str, Any]:
        """The cell's ``metadata.rlm``."""
        return {
            "step": self.step,
            "block": self.block,
            "exec": self.exec.to_metadata(),
            "subcalls": [s.to_metadata() for s in self.subcalls],
            **self.extra,
        }

    @classmethod
    def from_cell(cls, cell: Mapping[str, Any]) -> CodeCellRecord:
        """Read a recorded code cell."""
        meta = cell.get("metadata") or {}
        rlm = dict(meta.get("rlm") or {})
        step, block = int(rlm.pop("step")), int(rlm.pop("block", 0) or 0)
        exec_ = ExecRecord.from_metadata(rlm.pop("exec", None))
        subcalls = [SubcallRecord.from_metadata(s) for s in rlm.pop("subcalls", None) or []]
        return cls(
            step=step,
            block=block,
            source=str(cell.get("source") or ""),
            outputs=list(cell.get("outputs") or []),
            execution_count=cell.get("execution_count"),
            exec=exec_,
            subcalls=subcalls,
            tags=tuple(t for t in meta.get("tags", []) if t != "rlm-code"),
            extra=rlm,
        )


def code_cell_id(step: int, block: int) -> str:
    """The id of the code cell of block ``block`` of step ``step``."""
    return f"step-{step}-code-{block}"


@dataclass
class StepRecord:
    """One root-model turn: its reply and the code cells of its blocks.

    Attributes:
        step: the step number, from 1.
        raw: the model's whole reply.
        prose: the reply as the notebook shows it (code replaced by markers), without the heading.
        usage: tokens of the root call.
        latency_s: seconds the root call took.
        extra: more keys of the markdown cell's ``metadata.rlm`` (``model``, ``cost_usd``,
            ``retries``, ``stop_reason``, ``last_call``, ...).
        code: the step's code cells, in order.
        has_reply: whether the notebook holds the step's markdown cell.
    """

    step: int
    raw: str = ""
    prose: str = ""
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    code: list[CodeCellRecord] = field(default_factory=list)
    has_reply: bool = True

    def to_metadata(self) -> dict[str, Any]:
        """The markdown cell's ``metadata.rlm``."""
        return {
            "step": self.step,
            "role": "model",
            "raw": self.raw,
            "usage": self.usage.to_dict(),
            "latency_s": self.latency_s,
            **self.extra,
        }

    @property
    def cost_usd(self) -> float | None:
        """The root call's recorded cost."""
        return self.extra.get("cost_usd")


_RUN_KEYS = (
    "format",
    "run_id",
    "status",
    "stop_reason",
    "question",
    "answer",
    "models",
    "limits",
    "system_prompt",
    "context",
    "usage",
    "cost_usd",
    "steps",
    "subcalls",
    "started",
    "finished",
    "duration_s",
    "versions",
    "parent",
    "error",
    "depth",
    "children",
)


@dataclass
class ParentLink:
    """Where a run came from: the parent run of a child, or the run a fork started from.

    ``notebook`` is relative to the notebook that holds the link. ``block`` and ``subcall``
    are set for a child run (the parent's cell and sub-call that started it).
    """

    notebook: str
    run_id: str | None
    step: int | None = None
    block: int | None = None
    subcall: int | None = None

    def to_metadata(self) -> dict[str, Any]:
        data: dict[str, Any] = {"notebook": self.notebook, "run_id": self.run_id, "step": self.step}
        if self.block is not None:
            data.update(block=self.block, subcall=self.subcall)
        return data

    @classmethod
    def from_metadata(cls, data: Any) -> ParentLink | None:
        if not isinstance(data, Mapping) or not data.get("notebook"):
            return None
        return cls(
            notebook=str(data["notebook"]),
            run_id=data.get("run_id"),
            step=data.get("step"),
            block=data.get("block"),
            subcall=data.get("subcall"),
        )


@dataclass
class ChildSummary:
    """One child run in its parent's summary: enough to show the tree without opening it."""

    notebook: str
    question: str
    status: str
    steps: int
    depth: int
    tokens: int
    cost_usd: float | None
    step: int
    block: int
    subcall: int

    def to_metadata(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_metadata(cls, data: Mapping[str, Any]) -> ChildSummary:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class RunRecord:
    """The run-level record, ``metadata.rlm`` (see DESIGN.md for each key).

    Unknown keys (from a newer minor writer or a user) are kept in ``extra`` and written back.
    """

    run_id: str
    question: str = ""
    status: str = "running"
    stop_reason: str | None = None
    answer: str | None = None
    models: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    system_prompt: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Usage] = field(default_factory=lambda: {"root": Usage(), "sub": Usage()})
    cost_usd: float | None = 0.0
    steps: int = 0
    subcalls: int = 0
    started: str | None = None
    finished: str | None = None
    duration_s: float | None = None
    versions: dict[str, str] = field(default_factory=dict)
    parent: ParentLink | None = None
    error: str | None = None
    depth: int = 1
    children: list[ChildSummary] = field(default_factory=list)
    format: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, data: Mapping[str, Any]) -> RunRecord:
        """Read ``metadata.rlm`` (format 1 or 2)."""
        usage = _dict(data.get("usage"))
        return cls(
            run_id=str(data.get("run_id") or ""),
            question=str(data.get("question") or ""),
            status=str(data.get("status") or "running"),
            stop_reason=data.get("stop_reason"),
            answer=data.get("answer"),
            models=dict(_dict(data.get("models"))),
            limits=dict(_dict(data.get("limits"))),
            system_prompt=data.get("system_prompt"),
            context=dict(_dict(data.get("context"))),
            usage={role: Usage.from_dict(_dict(usage.get(role))) for role in ("root", "sub")},
            cost_usd=data.get("cost_usd"),
            steps=int(data.get("steps") or 0),
            subcalls=int(data.get("subcalls") or 0),
            started=data.get("started"),
            finished=data.get("finished"),
            duration_s=data.get("duration_s"),
            versions=dict(_dict(data.get("versions"))),
            parent=ParentLink.from_metadata(data.get("parent")),
            error=data.get("error"),
            depth=int(data.get("depth") or 1),
            children=[ChildSummary.from_metadata(c) for c in data.get("children") or []],
            format=int(data.get("format") or 1),
            extra={k: v for k, v in data.items() if k not in _RUN_KEYS},
        )

    def to_metadata(self) -> dict[str, Any]:
        """The JSON form of ``metadata.rlm``."""
        return {
            **self.extra,
            "format": self.format,
            "run_id": self.run_id,
            "status": self.status,
            "stop_reason": self.stop_reason,
            "question": self.question,
            "answer": self.answer,
            "models": dict(self.models),
            "limits": dict(self.limits),
            "system_prompt": self.system_prompt,
            "context": dict(self.context),
            "usage": {role: u.to_dict() for role, u in self.usage.items()},
            "cost_usd": self.cost_usd,
            "steps": self.steps,
            "subcalls": self.subcalls,
            "started": self.started,
            "finished": self.finished,
            "duration_s": self.duration_s,
            "versions": dict(self.versions),
            "parent": self.parent.to_metadata() if self.parent is not None else None,
            "error": self.error,
            "depth": self.depth,
            "children": [c.to_metadata() for c in self.children],
        }

    @property
    def total_tokens(self) -> int:
        """Root and sub-call tokens of the run (for a tree root: of the whole tree)."""
        return sum(u.total_tokens for u in self.usage.values())


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
