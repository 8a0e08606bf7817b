"""The methods a benchmark compares on the same instances: the RLM, its ablations, baselines.

- ``rlm``: the recursive language model with ``llm_query`` sub-calls (depth 1, as in the paper).
- ``rlm-no-subcalls``: the same REPL without a sub-model: the prompt says so and the kernel's
  ``llm_query`` refuses (the run's sub-call budget is zero), as the paper's ablation.
- ``rlm-depth-2``: ``rlm_query`` starts child RLMs with kernels of their own (``max_depth=2``).
- ``direct``, ``summary``, ``retrieval``: the baselines of :mod:`.baselines`.

Every method returns a :class:`Outcome` and leaves a notebook at the path it is given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..llm import LLM
from ..run import RLM
from ..types import Completion, Limits, Message, RunResult
from . import baselines
from .tasks import Instance

__all__ = ["METHODS", "NO_SUBCALLS_PROMPT", "Models", "Outcome", "method_names", "run_method"]


@dataclass
class Outcome:
    """How one method did on one instance (before scoring).

    Attributes:
        answer: the final answer, or ``None``.
        status: ``answered``, ``no_answer``, ``error`` or ``interrupted``.
        notebook: the run's notebook.
        cost_usd: dollars of the priced calls (``None`` if no call was priced).
        unpriced_calls: calls of models without a known price.
        input_tokens: prompt tokens of every call (cache reads included).
        output_tokens: reply tokens of every call.
        calls: model calls made, root and sub, whether the API or the cache answered them.
        cached_calls: calls answered by the model-call cache.
        duration_s: wall time.
        error: what went wrong, for failed runs.
    """

    answer: str | None
    status: str
    notebook: str | None
    cost_usd: float | None = None
    unpriced_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    cached_calls: int = 0
    duration_s: float = 0.0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return dataclasses.asdict(self)


@dataclass
class Models:
    """The models of a benchmark, resolved once and shared by every run.

    Attributes:
        root: answers the question (the RLM's root model; the baselines' answering model).
        sub: the RLM's sub-model; writes the ``summary`` baseline's chunk summaries.
        window: the input window assumed for ``direct`` (tokens).
    """

    root: LLM
    sub: LLM
    window: int


class Borrowed:
    """A shared model lent to one run: the run may not close it (other runs use its client)."""

    def __init__(self, llm: LLM) -> None:
        self.name = llm.name
        self._llm = llm

    async def complete(
        self, messages: Sequence[Message], *, max_tokens: int, **sampling: Any
    ) -> Completion:
        """The shared model's completion."""
        return await self._llm.complete(messages, max_tokens=max_tokens, **sampling)


NO_SUBCALLS_PROMPT = """\
You answer a question about a context held in a persistent Python REPL (a Jupyter kernel) as the \
variable `context`. You never see the context itself, only what your code prints: look at it \
and work it out with code.

This run has no sub-model: `llm_query`, `llm_query_batched` and `rlm_query` are not available \
(they raise BudgetExceeded). Read, filter, parse and count with Python alone (`re`, slicing, \
`collections`), and print only what you need to see.

## The context
{context_description}

## Running code
Write Python in fenced ```repl blocks. The blocks of a reply run in order in the same kernel; \
variables persist across blocks and replies. After each reply you are shown what its blocks \
printed, at most {max_output_chars} characters in all. `SHOW_VARS()` lists your variables.

## Limits of this run
{run_limits}

## Finishing
- `FINAL_VAR(name)` on a line of its own, outside code: the run ends with the value of the \
kernel variable `name` (as str).
- `FINAL(text)` on a line of its own, outside code: the run ends with `text` taken literally.
- Answer the question itself, explicitly and in the format it asks for, without commentary.
You have {max_steps} replies."""


def _rlm_outcome(result: RunResult) -> Outcome:
    root, sub = result.usage.get("root"), result.usage.get("sub")
    usages = [u for u in (root, sub) if u is not None]
    return Outcome(
        answer=result.answer,
        status=result.status,
        notebook=result.notebook,
        cost_usd=result.cost_usd,
        input_tokens=sum(
            u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens
            for u in usages
        ),
        output_tokens=sum(u.output_tokens for u in usages),
        # The run's usage counts the calls the API answered; the cache's are counted apart.
        calls=sum(u.calls for u in usages) + result.cache_hits,
        cached_calls=result.cache_hits,
        duration_s=result.duration_s,
        error=result.error,
        extra={"steps": result.steps, "subcalls": result.subcalls, "stop": result.stop_reason},
    )


def _rlm_method(**settings: Any) -> Callable[..., Awaitable[Outcome]]:
    async def run(instance: Instance, models: Models, limits: Limits, notebook: Path) -> Outcome:
        prompt = settings.get("system_prompt")
        changed = {k: v for k, v in settings.items() if k != "system_prompt"}
        rlm = RLM(
            Borrowed(models.root),
            Borrowed(models.sub),
            limits=dataclasses.replace(limits, **changed),
            system_prompt=prompt,
            display=False,
            warm_kernels=1 if changed.get("max_depth", 1) > 1 else 0,
        )
        return _rlm_outcome(await rlm.arun(instance.question, instance.context, notebook=notebook))

    return run


METHODS: dict[str, Callable[..., Awaitable[Outcome]]] = {
    "rlm": _rlm_method(max_depth=1),
    "rlm-no-subcalls": _rlm_method(max_depth=1, max_subcalls=0, system_prompt=NO_SUBCALLS_PROMPT),
    "rlm-depth-2": _rlm_method(max_depth=2),
    "direct": baselines.direct,
    "summary": baselines.summary,
    "retrieval": baselines.retrieval,
}


def method_names() -> list[str]:
    """The names ``--methods`` accepts."""
    return list(METHODS)


async def run_method(
    name: str, instance: Instance, models: Models, limits: Limits, notebook: Path
) -> Outcome:
    """Answer ``instance`` with the method ``name``, recording the run at ``notebook``."""
    return await METHODS[name](instance, models, limits, notebook)
