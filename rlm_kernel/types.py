"""Plain data shared by the host modules: limits, usage, completions, results."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["running", "answered", "no_answer", "error", "interrupted"]
Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass(frozen=True)
class Limits:
    """Every bound of a run in one place; ``None`` means unbounded.

    Attributes:
        max_steps: root-model turns before a last call asks for the best answer.
        max_subcalls: sub-model calls (``llm_query`` and friends) in the whole run.
        max_cost_usd: dollars spent on root and sub calls; unpriced models count as 0.
        max_depth: depth of the run tree: the root is depth 1, and ``rlm_query`` starts a child
            run below ``max_depth`` (at ``max_depth`` it is a plain sub-model call).
        child_max_steps: root-model turns of each child run (default: ``max_steps``).
        cell_timeout: seconds one code block may run before the kernel is interrupted.
        timeout: seconds for the whole run.
        max_output_chars: characters of one block's output shown to the model (head + tail).
        max_cell_output_bytes: output bytes of one cell kept in the notebook.
        max_concurrency: sub-calls the host runs at once.
        max_tokens: output-token cap of each root-model reply.
        sub_max_tokens: output-token cap of each sub-model reply.
    """

    max_steps: int = 30
    max_subcalls: int | None = None
    max_cost_usd: float | None = None
    max_depth: int = 2
    child_max_steps: int | None = None
    cell_timeout: float | None = 300.0
    timeout: float | None = None
    max_output_chars: int = 20_000
    max_cell_output_bytes: int = 1_000_000
    max_concurrency: int = 16
    max_tokens: int = 16_000
    sub_max_tokens: int = 8_000

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and (isinstance(value, bool) or value <= 0):
                raise ValueError(f"{f.name} must be a positive number, not {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Usage:
    """Token counts, summed over calls."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    def add(self, other: Usage) -> None:
        # Spelled out: this runs on every sub-call, where dataclasses.fields() costs.
        self.calls += other.calls
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_input_tokens += other.cache_read_input_tokens
        self.cache_creation_input_tokens += other.cache_creation_input_tokens

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_input_tokens
            + self.cache_creation_input_tokens
        )

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Usage:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: int(v) for k, v in (data or {}).items() if k in names})


@dataclass(frozen=True)
class Completion:
    """One model reply.

    ``usage.calls`` is 1. ``cost_usd`` is ``None`` when the model has no known price.
    ``retries`` counts the HTTP attempts the SDK repeated before this reply.
    """

    text: str
    model: str
    usage: Usage = field(default_factory=lambda: Usage(calls=1))
    latency_s: float = 0.0
    cost_usd: float | None = None
    retries: int = 0
    stop_reason: str | None = None


@dataclass
class RunResult:
    """What a run produced; the notebook holds the full record."""

    answer: str | None
    status: Status
    notebook: str | None
    run_id: str
    stop_reason: str | None = None
    steps: int = 0
    subcalls: int = 0
    usage: dict[str, Usage] = field(default_factory=lambda: {"root": Usage(), "sub": Usage()})
    cost_usd: float | None = None
    duration_s: float = 0.0
    error: str | None = None
    models: dict[str, str] = field(default_factory=dict)
    children: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form: answer, status, notebook, steps, subcalls, usage, cost, time."""
        return {
            "answer": self.answer,
            "status": self.status,
            "stop_reason": self.stop_reason,
            "notebook": self.notebook,
            "run_id": self.run_id,
            "steps": self.steps,
            "subcalls": self.subcalls,
            "usage": {k: u.to_dict() for k, u in self.usage.items()},
            "cost_usd": self.cost_usd,
            "duration_s": round(self.duration_s, 3),
            "error": self.error,
            "children": len(self.children),
        }
