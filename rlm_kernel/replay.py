"""Replay a recorded run inside a kernel: ``llm_query`` & co. answered from the notebook.

:class:`ReplayTransport` puts a :class:`~rlm_kernel.record.ReplayBook` behind the kernel
runtime's one-method ``Transport``, so the recorded cells run again with every sub-call answered
from the record (a recorded failure fails again the same way, with the same exception class);
:func:`install` does that in a namespace: the ``%rlm_replay`` magic of every run notebook's setup
cell calls it. Checking a whole notebook against its record is :mod:`rlm_kernel.verify`.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import _tools_kernel, runtime
from .context import RecordedContext, resolve_context
from .errors import UsageError
from .record import ErrorRecord, ReplayBook, read
from .tools import request_text

__all__ = [
    "LiveModel",
    "ReplaySession",
    "ReplayTransport",
    "final_line",
    "final_output",
    "finals_of",
    "install",
    "is_note",
]

# Marks the lines replay adds to a cell's outputs (the FINAL verdict), so comparisons skip them.
NOTE_KEY = "replay"


CANCELLED_WAIT_S = 3600.0


def _wait_for_interrupt() -> None:
    """Block as a call the cell's time limit cut short did, until the kernel is interrupted."""
    deadline = time.monotonic() + CANCELLED_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(0.1)


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"error": ErrorRecord(kind, message).to_metadata()}


class LiveModel:
    """The sub-model that answers prompts replay cannot (``--live``), resolved on first use.

    Args:
        name: the recorded sub-model, ``provider:model``.
        max_tokens: the run's ``sub_max_tokens``.
    """

    def __init__(self, name: str | None, max_tokens: int = 8000) -> None:
        self.name = name
        self.max_tokens = max_tokens
        self._llm: Any = None

    def complete(self, prompts: Sequence[str]) -> list[dict[str, str]]:
        """Answer ``prompts`` concurrently; one ``ok``/``error`` result per prompt.

        Raises:
            UsageError: the model cannot be used here (no API key, unknown provider).
        """
        from jupyter_core.utils import run_sync  # works with or without a running event loop

        from .llm import resolve

        if self.name is None:
            raise UsageError("the run recorded no sub-model to call")
        if self._llm is None:
            self._llm = resolve(self.name)
        return run_sync(self._complete_all)(list(prompts))

    async def _complete_all(self, prompts: list[str]) -> list[dict[str, str]]:
        import asyncio

        async def one(prompt: str) -> dict[str, str]:
            try:
                completion = await self._llm.complete(
                    [{"role": "user", "content": prompt}], max_tokens=self.max_tokens
                )
            except Exception as e:
                return {"error": ErrorRecord.from_exception(e).to_metadata()}
            return {"ok": completion.text}

        return list(await asyncio.gather(*(one(p) for p in prompts)))


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def final_line(value: str, recorded: str | None) -> str:
    """One line saying whether a replayed answer matches the recorded one."""
    if value == recorded:
        return f"FINAL: {_one_line(value)} (matches the recorded answer)"
    if recorded is None:
        return f"FINAL: {_one_line(value)} — the recorded run ended without an answer"
    return f"FINAL: {_one_line(value)} — the recorded answer was {_one_line(recorded)}"


def final_output(value: str, via: str, recorded: str | None) -> tuple[dict, dict]:
    """The display data and metadata of the line announcing a replayed final answer.

    The metadata marks the output as replay's own, so comparisons leave it out and
    :func:`areplay_notebook` reads the answer from it.
    """
    note = {"kind": "final", "value": value, "via": via, "matches": value == recorded}
    return {"text/plain": final_line(value, recorded)}, {"rlm": {NOTE_KEY: note}}


def is_note(output: Mapping[str, Any]) -> bool:
    """Whether an output is one replay added (a final answer's verdict), not the code's."""
    rlm = (output.get("metadata") or {}).get("rlm")
    return isinstance(rlm, dict) and NOTE_KEY in rlm


def finals_of(outputs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The final answers replay announced in ``outputs``, in order."""
    notes = [o["metadata"]["rlm"][NOTE_KEY] for o in outputs if is_note(o)]
    return [str(n.get("value")) for n in notes if n.get("kind") == "final"]


FinalHook = Callable[[str, str, "str | None"], None]


def _print_final(value: str, via: str, recorded: str | None) -> None:
    print(final_line(value, recorded))


class ReplayTransport:
    """The kernel runtime's ``Transport``, answering from a :class:`ReplayBook`.

    ``subcall`` requests get the recorded responses (a recorded failure fails again the same
    way); a prompt that was never recorded fails the request with ``ReplayMiss``, or is sent to
    ``live`` when given. ``final`` requests are remembered in :attr:`finals` and announced with
    ``on_final(value, via, recorded_answer)`` (default: print :func:`final_line`).

    Args:
        book: the recorded calls.
        recorded_answer: ``metadata.rlm.answer``, to say whether a final answer matches.
        max_subcalls: the run's sub-call limit: past it, calls fail with ``BudgetExceeded`` as
            they did in the run (those calls were never recorded).
        live: a model for prompts the record cannot answer.
        on_final: called on each final answer.
    """

    def __init__(
        self,
        book: ReplayBook,
        *,
        recorded_answer: str | None = None,
        max_subcalls: int | None = None,
        live: LiveModel | None = None,
        on_final: FinalHook | None = None,
    ) -> None:
        self.book = book
        self.recorded_answer = recorded_answer
        self.max_subcalls = max_subcalls
        self.live = live
        self.on_final = on_final or _print_final
        self.finals: list[str] = []
        self.subcalls = 0
        self.tool_calls = 0
        self.live_calls = 0
        self.refused: ErrorRecord | None = None
        self._lock = threading.Lock()

    def request(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Answer one request of the kernel runtime."""
        if op == "final":
            value = str(payload.get("value"))
            self.finals.append(value)
            self.on_final(value, str(payload.get("via")), self.recorded_answer)
            return {"ok": True}
        if op == "tool":
            return self._tool(payload)
        if op != "subcall":
            return _error("BridgeError", f"replay cannot answer a {op!r} request")
        prompts = [str(p) for p in payload.get("prompts") or []]
        with self._lock:
            calls = self.book.take(prompts, partial=self.live is not None)
            results: list[dict[str, str] | None] = []
            for call in calls:
                if call is not None:
                    self.subcalls += 1
                    failure = call.failure
                    if failure is not None and failure.type == "BudgetExceeded":
                        self.refused = failure
                    results.append(call.result())
                elif self.refused is not None:
                    # A budget never comes back within a run: every later call was refused
                    # too, and repeated refusals are recorded once.
                    results.append({"error": self.refused.to_metadata()})
                elif self.max_subcalls is not None and self.subcalls >= self.max_subcalls:
                    # The run met its limit here, so these calls were refused and not recorded.
                    message = f"sub-call budget exhausted: {self.subcalls} used of "
                    results.append(_error("BudgetExceeded", f"{message}{self.max_subcalls}"))
                else:
                    results.append(None)
            missed = [i for i, r in enumerate(results) if r is None]
            cut_short = any(c is not None and c.cancelled for c in calls)
        if cut_short:
            _wait_for_interrupt()
        with self._lock:
            if missed and self.live is None:
                return _error("ReplayMiss", self.book.miss_message(prompts[missed[0]]))
            self.subcalls += len(missed)
        if missed:
            assert self.live is not None
            try:
                answers = self.live.complete([prompts[i] for i in missed])
            except UsageError as e:
                message = self.book.miss_message(prompts[missed[0]])
                return _error(
                    "ReplayMiss",
                    f"{message}. --live could not call the recorded sub-model "
                    f"{self.live.name}: {e} (--live needs the provider's API key in the "
                    "kernel's environment)",
                )
            self.live_calls += len(missed)
            for i, answer in zip(missed, answers, strict=True):
                results[i] = answer
        return {"results": results}

    def _tool(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A host tool call, answered from the record: the host function is never called."""
        text = request_text(
            str(payload.get("name")), payload.get("args") or [], payload.get("kwargs") or {}
        )
        with self._lock:
            (call,) = self.book.take([text])
            if call is None:
                return _error("ReplayMiss", self.book.miss_message(text))
            self.tool_calls += 1
        if call.cancelled:
            _wait_for_interrupt()
        return call.result()


@dataclasses.dataclass
class ReplaySession:
    """What :func:`install` set up: the run being replayed and its transport.

    Attributes:
        notebook: the run notebook.
        run_id: the recorded run's id.
        book: the recorded sub-calls.
        transport: the transport the kernel's functions use (``.finals`` holds the answers).
        context: the verified context.
    """

    notebook: Path
    run_id: str
    book: ReplayBook
    transport: ReplayTransport
    context: RecordedContext

    def describe(self) -> str:
        """One line saying what is replayed."""
        ctx = self.context
        source = f"{ctx.path.name}" if ctx.path is not None else "the text embedded in the notebook"
        live = "; prompts never recorded go to the live sub-model" if self.transport.live else ""
        calls = f"{len(self.book)} recorded sub-call{'s' * (len(self.book) != 1)}"
        return (
            f"Replaying run {self.run_id} from {self.notebook.name}: {calls}, context from "
            f"{source} (sha256 {ctx.sha256[:12]}… verified){live}."
        )


def install(
    namespace: dict[str, Any],
    notebook_path: str | os.PathLike[str],
    *,
    shell: Any = None,
    live: bool = False,
    on_final: FinalHook | None = None,
) -> ReplaySession:
    """Load a run notebook's context and recorded sub-calls into ``namespace``.

    After this, ``context`` is the run's input and ``llm_query`` & co. answer from the record,
    so the run's code cells run as they did. ``rlm_query`` answers with the recorded child
    run's answer (``rlm-kernel replay`` re-runs the children themselves).

    Args:
        namespace: where the code runs (``get_ipython().user_ns``).
        notebook_path: the run notebook.
        shell: the IPython shell, to watch ``answer`` after each cell.
        live: send prompts that were never recorded to the recorded sub-model.
        on_final: called as ``on_final(value, via, recorded_answer)`` on each final answer.

    Raises:
        NotebookFormatError: not a readable run notebook.
        ContextError: the context is missing or differs from the recorded one.
    """
    path = Path(notebook_path)
    run = read(path)
    ctx = resolve_context(run.run.context, path.parent)
    limits = run.run.limits
    model = LiveModel(run.run.models.get("sub"), limits.get("sub_max_tokens") or 8000)
    book = ReplayBook.from_run(run)
    transport = ReplayTransport(
        book,
        recorded_answer=run.run.answer,
        max_subcalls=limits.get("max_subcalls"),
        live=model if live else None,
        on_final=on_final,
    )
    runtime.install(
        namespace,
        transport,
        context_path=str(ctx.path) if ctx.path is not None else None,
        context_kind=ctx.kind,
        shell=shell,
    )
    if ctx.path is None:
        namespace["context"] = ctx.value()
    tools = run.run.extra.get("tools")
    if isinstance(tools, list) and tools:
        _tools_kernel.install(namespace, tools)
    return ReplaySession(path, run.run.run_id, book, transport, ctx)
