"""Plain data shared by the host modules: limits, usage, completions, sub-call records, results."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["running", "answered", "no_answer", "error", "interrupted"]
Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


def limit(default: Any, help: str, *, flag: str | None = None, metavar: str | None = None) -> Any:
    """Declare one field of :class:`Limits`: its default and the help text users read.

    ``flag`` names the command-line option when it is not the field's name with dashes (the
    one place where Python and command-line names may differ); ``metavar`` names its value.
    """
    meta = {"help": help, "flag": flag, "metavar": metavar}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Limits:
    """Every bound of a run in one place; ``None`` means unbounded.

    Each field is one line: its type, default and help text. The command line, the ``%%rlm``
    magic and this docstring's list of attributes are derived from them (``rlm_kernel.options``).
    """

    max_steps: int = limit(30, "root-model turns before a last call asks for the best answer")
    max_subcalls: int | None = limit(None, "sub-model calls (llm_query and friends) in the run")
    max_cost_usd: float | None = limit(
        None, "dollars for root and sub calls; unpriced models count as 0", flag="--max-cost"
    )
    max_depth: int = limit(
        1,
        "depth of rlm_query calls; today rlm_query always answers with the sub-model, "
        "as llm_query does, whatever the depth",
    )
    child_max_steps: int | None = limit(
        None,
        "turns of each child run started by rlm_query; none: as many as the root "
        "(rlm_query starts no child runs yet)",
    )
    cell_timeout: float | None = limit(
        300.0, "seconds one code block may run before the kernel is interrupted", metavar="S"
    )
    timeout: float | None = limit(None, "seconds for the whole run", metavar="S")
    max_output_chars: int = limit(
        20_000, "characters of one block's output shown to the model (head + tail)"
    )
    max_cell_output_bytes: int = limit(1_000_000, "output bytes of one cell kept in the notebook")
    max_concurrency: int = limit(16, "sub-calls the host runs at once")
    max_tokens: int = limit(16_000, "output-token cap of each root-model reply")
    sub_max_tokens: int = limit(8_000, "output-token cap of each sub-model reply")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and (isinstance(value, bool) or value <= 0):
                raise ValueError(f"{f.name} must be a positive number, not {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


Limits.__doc__ = (
    (Limits.__doc__ or "")
    + "\n    Attributes:\n"
    + "".join(
        f"        {f.name}: {f.metadata['help']} (default: {f.default!r}).\n"
        for f in dataclasses.fields(Limits)
    )
)


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
class SubcallRecord:
    """One sub-call made from a code cell, as stored in the cell's ``metadata.rlm.subcalls``."""

    id: int
    kind: Literal["llm", "rlm"]
    model: str
    prompt_sha256: str
    prompt_chars: int
    prompt_preview: str
    response: str | None = None
    latency_s: float = 0.0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    retries: int = 0
    error: str | None = None
    child: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # Spelled out: a batch records thousands of these, and dataclasses.asdict deep-copies.
        return {
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
            "error": self.error,
            "child": self.child,
        }


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
        }
