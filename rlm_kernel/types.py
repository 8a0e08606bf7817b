"""Plain data shared by the host modules: limits, usage, completions, results."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
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
        2,
        "depth of the run tree: the root is 1; below it rlm_query starts a child run "
        "(own kernel and notebook), at it rlm_query is a plain sub-model call",
    )
    child_max_steps: int | None = limit(
        None, "root-model turns of each child run started by rlm_query; none: as many as the root"
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
    tool_timeout: float | None = limit(
        60.0, "seconds one host tool call may take (tools are not sub-calls)", metavar="S"
    )
    max_tokens: int = limit(16_000, "output-token cap of each root-model reply")
    sub_max_tokens: int = limit(8_000, "output-token cap of each sub-model reply")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            # max_subcalls=0 is a REPL without a sub-model: llm_query refuses every call.
            zero = value == 0 and f.name == "max_subcalls"
            if value is not None and (isinstance(value, bool) or (value <= 0 and not zero)):
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


_TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


@dataclass
class Usage:
    """Token counts, summed over calls.

    ``unknown_calls`` counts the calls whose server reported no usage (llama.cpp's streams,
    for one): their tokens are not in the sums, which then hold only what is known. In the
    JSON form a usage made only of such calls has ``null`` token counts, never ``0``; a sum
    with some unknown calls keeps its known counts and says how many calls are unknown.
    """

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    unknown_calls: int = 0

    @classmethod
    def unknown(cls) -> Usage:
        """The usage of one call whose server did not report it."""
        return cls(calls=1, unknown_calls=1)

    def add(self, other: Usage) -> None:
        # Spelled out: this runs on every sub-call, where dataclasses.fields() costs.
        self.calls += other.calls
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_input_tokens += other.cache_read_input_tokens
        self.cache_creation_input_tokens += other.cache_creation_input_tokens
        self.unknown_calls += other.unknown_calls

    @property
    def total_tokens(self) -> int:
        """The tokens known: a lower bound when :attr:`unknown_calls` is not zero."""
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_input_tokens
            + self.cache_creation_input_tokens
        )

    @property
    def all_unknown(self) -> bool:
        """Whether no call of this usage reported its tokens (and there was at least one)."""
        return self.unknown_calls > 0 and self.unknown_calls >= self.calls

    def to_dict(self) -> dict[str, int | None]:
        """The JSON form: token counts ``null`` when unknown, ``unknown_calls`` when any."""
        data: dict[str, int | None] = dataclasses.asdict(self)
        if not self.unknown_calls:
            del data["unknown_calls"]
        elif self.all_unknown:
            data.update(dict.fromkeys(_TOKEN_FIELDS))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Usage:
        """Read :meth:`to_dict`'s form back (``null`` counts: calls whose usage is unknown)."""
        data = data or {}
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: int(v) for k, v in data.items() if k in names and v is not None}
        if "unknown_calls" not in values and any(
            k in data and data[k] is None for k in _TOKEN_FIELDS
        ):
            values["unknown_calls"] = values.get("calls", 1)
        return cls(**values)


def tokens_text(usages: Iterable[Usage]) -> str:
    """The tokens of ``usages`` for people: ``"1,234 tokens"``, ``"≥ 1,234 tokens"`` when some
    calls did not report theirs, ``"tokens unknown"`` when none did."""
    total = Usage()
    for u in usages:
        total.add(u)
    if total.all_unknown:
        return "tokens unknown"
    prefix = "≥ " if total.unknown_calls else ""
    return f"{prefix}{total.total_tokens:,} tokens"


SAMPLING_KEYWORDS = ("temperature", "seed")


def sampling(default: Any, help: str, *, metavar: str) -> Any:
    """Declare one field of :class:`Sampling`: its default and the help text users read."""
    return field(default=default, metadata={"help": help, "flag": None, "metavar": metavar})


@dataclass(frozen=True)
class Sampling:
    """How the models sample, per role; ``None`` leaves it to the model's server.

    Each field is one line, as in :class:`Limits`: the command line (``--temperature``,
    ``--sub-seed``, ...) and the ``%%rlm`` magic derive their options from it
    (``rlm_kernel.options``). Only the values set are sent, as keywords of
    ``LLM.complete(messages, max_tokens=..., temperature=..., seed=...)``.
    """

    temperature: float | None = sampling(
        None, "sampling temperature of the root model (0: most deterministic)", metavar="T"
    )
    seed: int | None = sampling(
        None, "random seed of the root model, where its API takes one", metavar="N"
    )
    sub_temperature: float | None = sampling(
        None, "sampling temperature of the sub-model", metavar="T"
    )
    sub_seed: int | None = sampling(
        None, "random seed of the sub-model, where its API takes one", metavar="N"
    )

    def __post_init__(self) -> None:
        for name in ("temperature", "sub_temperature"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value <= 2
            ):
                raise ValueError(f"{name} must be a number from 0 to 2, not {value!r}")
        for name in ("seed", "sub_seed"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an integer, not {value!r}")

    def of(self, role: Literal["root", "sub"]) -> dict[str, Any]:
        """The keywords to send to the ``role`` model: only the ones that are set."""
        prefix = "" if role == "root" else "sub_"
        values = {k: getattr(self, prefix + k) for k in SAMPLING_KEYWORDS}
        return {k: v for k, v in values.items() if v is not None}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The notebook's form: ``{"root": {...}, "sub": {...}}``, the keywords set per role."""
        return {"root": self.of("root"), "sub": self.of("sub")}


@dataclass(frozen=True)
class Completion:
    """One model reply.

    ``usage.calls`` is 1. ``cost_usd`` is ``None`` when the model has no known price.
    ``retries`` counts the HTTP attempts the SDK repeated before this reply. ``cached`` marks
    an answer taken from a model-call cache (``rlm_kernel.llm.cache``): no API call was made,
    ``cost_usd`` is 0 and ``usage`` is the original call's, for information.
    """

    text: str
    model: str
    usage: Usage = field(default_factory=lambda: Usage(calls=1))
    latency_s: float = 0.0
    cost_usd: float | None = None
    retries: int = 0
    stop_reason: str | None = None
    cached: bool = False


def _plain(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)  # a pydantic model instance: its JSON data
    return dump(mode="json") if callable(dump) else value


@dataclass
class RunResult:
    """What a run produced; the notebook holds the full record.

    ``value`` is the parsed final value of a run with an answer schema (a pydantic model
    instance when the schema is one), else ``None``. ``tool_calls`` counts the host tool calls
    of the run's own code; they are not ``subcalls``.
    """

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
    cache_hits: int = 0
    error: str | None = None
    models: dict[str, str] = field(default_factory=dict)
    children: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: int = 0
    value: Any = None

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
            "cache_hits": self.cache_hits,
            "error": self.error,
            "children": len(self.children),
            "tool_calls": self.tool_calls,
            **({"value": _plain(self.value)} if self.value is not None else {}),
        }
