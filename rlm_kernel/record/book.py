"""Replay's recorded-answer book: every sub-call a run recorded, keyed by prompt and occurrence.

The n-th call with a prompt gets the n-th recorded response (prompts are matched by
:func:`~rlm_kernel.record.format.prompt_sha256`). Both ways of replaying a run answer through it:
``%rlm_replay`` in a kernel (the kernel runtime's replay transport) and a fork's replayed prefix
on the host.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import ReplayMiss, SubcallFailed
from .format import prompt_sha256
from .records import ErrorRecord

__all__ = ["RecordedCall", "ReplayBook"]

PREVIEW_CHARS = 100


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    """A prompt on one line, quoted and cut to ``limit`` characters, for messages."""
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")


@dataclasses.dataclass(frozen=True)
class RecordedCall:
    """One recorded sub-call, with the cell that made it.

    Attributes:
        step: the step of the cell that made the call.
        block: the cell's block number within the step.
        prompt_sha256: hex SHA-256 of the prompt (UTF-8).
        prompt_preview: the first characters of the prompt.
        response: what was answered, or ``None`` for a failed call.
        error: the recorded failure (a record; a format 1 string is read as one), or ``None``.
        model: the model that answered.
        kind: ``llm`` or ``rlm``.
        child: a child run's notebook, relative to the run notebook.
        stop_reason: why the model stopped (``max_tokens``: the answer was cut), if recorded.
    """

    step: int
    block: int
    prompt_sha256: str
    prompt_preview: str = ""
    response: str | None = None
    error: ErrorRecord | str | None = None
    model: str | None = None
    kind: str = "llm"
    child: str | None = None
    stop_reason: str | None = None

    def __post_init__(self) -> None:
        if self.error is not None and not isinstance(self.error, ErrorRecord):
            object.__setattr__(self, "error", _legacy_error(str(self.error), self.model))

    @property
    def where(self) -> str:
        """``step K.B``: the cell that made the call."""
        return f"step {self.step}.{self.block}"

    @property
    def cancelled(self) -> bool:
        """Whether the call was cut short (its cell timed out while it ran)."""
        return isinstance(self.error, ErrorRecord) and self.error.type == "SubcallCancelled"

    @property
    def failure(self) -> ErrorRecord | None:
        """The failure the kernel's code met, or ``None`` when the call was answered."""
        if isinstance(self.error, ErrorRecord):
            return self.error
        if self.response is None:
            return ErrorRecord("SubcallError", "the sub-call failed without a message")
        return None

    def result(self) -> dict[str, Any]:
        """The call as a bridge result: ``{"ok": text, "stop_reason": ...}`` or ``{"error": ...}``.

        The stop reason goes with the answer, so replayed code sees the same ``truncated``.
        """
        failure = self.failure
        if failure is not None:
            return {"error": failure.to_metadata()}
        if self.stop_reason is not None:
            return {"ok": self.response, "stop_reason": self.stop_reason}
        return {"ok": self.response}


def _legacy_error(text: str, model: str | None) -> ErrorRecord:
    # Format 1 kept "Class: message" as the kernel saw it, except that a ModelError was kept
    # without its class and starts with the model's name.
    if model and text.startswith(f"{model}: "):
        return ErrorRecord("SubcallError", f"ModelError: {text}")
    return ErrorRecord.from_metadata(text) or ErrorRecord("SubcallError", text)


class ReplayBook:
    """Every recorded sub-call of a run, answered by prompt hash and occurrence.

    Thread-safe: code in the kernel may call ``llm_query`` from several threads.

    Args:
        calls: the recorded calls in the order they were made (notebook order).
    """

    def __init__(self, calls: Iterable[RecordedCall]) -> None:
        self.calls = list(calls)
        self._by_hash: dict[str, list[RecordedCall]] = {}
        self._position: dict[int, int] = {}  # index in self.calls -> occurrence of its hash
        for i, call in enumerate(self.calls):
            same = self._by_hash.setdefault(call.prompt_sha256, [])
            self._position[i] = len(same)
            same.append(call)
        self._used: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.last: RecordedCall | None = None

    @classmethod
    def from_run(cls, run: Any) -> ReplayBook:
        """The sub-calls recorded by a :class:`~rlm_kernel.record.RunNotebook`, in order."""
        return cls(
            RecordedCall(
                step=cell.step,
                block=cell.block,
                prompt_sha256=sub.prompt_sha256,
                prompt_preview=sub.prompt_preview,
                response=sub.response,
                error=_format1(sub.error, sub.model, run.run.format),
                model=sub.model,
                kind=sub.kind,
                child=sub.child,
                stop_reason=sub.stop_reason,
            )
            for cell, sub in run.subcalls()
        )

    def __len__(self) -> int:
        return len(self.calls)

    @property
    def used(self) -> int:
        """How many recorded calls have been answered so far."""
        return sum(self._used.values())

    def answer(self, prompt: str) -> str:
        """The recorded response to the next occurrence of ``prompt``.

        Raises:
            ReplayMiss: the run never sent this prompt (this many times).
            SubcallFailed: the recorded call failed; it carries the recorded failure, so the
                kernel's code meets the same exception with the same message.
        """
        (call,) = self.take([prompt])
        if call is None:
            raise ReplayMiss(self.miss_message(prompt))
        failure = call.failure
        if failure is not None:
            raise SubcallFailed(failure.message, wire_type=failure.type, retries=failure.retries)
        assert call.response is not None
        return call.response

    def take(self, prompts: Sequence[str], *, partial: bool = False) -> list[RecordedCall | None]:
        """Match ``prompts`` (one request, in order) to their recorded calls and use them up.

        A prompt with no recorded call left gets ``None``. Unless ``partial``, a request with
        any ``None`` uses up nothing, so a missed batch leaves the book as it was.
        """
        with self._lock:
            used = Counter(self._used)
            found: list[RecordedCall | None] = []
            for prompt in prompts:
                digest = prompt_sha256(prompt)
                same = self._by_hash.get(digest, [])
                if used[digest] < len(same):
                    found.append(same[used[digest]])
                    used[digest] += 1
                else:
                    found.append(None)
            if partial or None not in found:
                self._used = used
                self.last = next((c for c in reversed(found) if c is not None), self.last)
            return found

    def next_unused(self) -> RecordedCall | None:
        """The first recorded call, in notebook order, that has not been answered yet."""
        with self._lock:
            for i, call in enumerate(self.calls):
                if self._position[i] >= self._used[call.prompt_sha256]:
                    return call
        return None

    def miss_message(self, prompt: str) -> str:
        """Why ``prompt`` has no recorded response, and where the replay stands in the record."""
        digest = prompt_sha256(prompt)
        recorded = self._by_hash.get(digest, [])
        if recorded:
            what = (
                f"the run sent this prompt {len(recorded)} time{'s' * (len(recorded) != 1)} "
                f"(first at {recorded[0].where}) and every recorded response is used up"
            )
        else:
            what = "the run never sent this prompt"
        text = (
            f"no recorded response for a prompt of {len(prompt):,} characters "
            f"(sha256 {digest[:12]}…): {what}. Prompt: {preview(prompt)}"
        )
        nxt = self.next_unused()
        if nxt is not None:
            text += (
                f". The record's next unused sub-call was made at {nxt.where} with the prompt "
                f"{preview(nxt.prompt_preview)}"
            )
        elif self.calls:
            text += ". Every recorded sub-call is used up (the last one was made at "
            text += f"{self.calls[-1].where})"
        else:
            text += ". The run recorded no sub-calls"
        if self.last is not None:
            text += f"; the last matched sub-call was made at {self.last.where}"
        return text


def _format1(error: ErrorRecord | None, model: str | None, fmt: int) -> ErrorRecord | None:
    if error is None or fmt >= 2:
        return error
    # Format 1 errors were strings, read by ErrorRecord.from_metadata without the model's name.
    text = error.message if error.type == "SubcallError" else f"{error.type}: {error.message}"
    return _legacy_error(text, model)
