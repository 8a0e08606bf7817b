"""The sub-call service of one run: what answers ``llm_query`` & co. coming over the bridge.

It owns the sub-models, the run's share of the budget and the sub-call records, kept per cell
by the id the kernel sends with each request. A call that arrives after its cell was recorded (a
background thread) is added to that same cell, marked ``late``. While a fork replays the steps
it copies, the service answers from the parent's :class:`~rlm_kernel.record.ReplayBook`, the
same recorded-answer path as ``%rlm_replay``. ``rlm_query`` calls go to a child runner (a run of
their own, see :mod:`rlm_kernel.tree`) until the maximum depth, then to the sub-model.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from .bridge import Reply, SubcallRequest, ToolRequest
from .budget import Budget
from .errors import BridgeError, BudgetExceeded, ModelRefused, ToolError
from .hooks import run_hook
from .llm import LLM, prompt_cache, resolve
from .llm import complete as llm_complete
from .record import ErrorRecord, ReplayBook, SubcallRecord, prompt_sha256
from .tools import ToolBox, request_text
from .types import Limits

__all__ = ["ChildStarter", "SubcallService"]

PROMPT_PREVIEW_CHARS = 200
CANCELLED_WAIT_S = 3600.0


class ChildStarter(Protocol):
    """Runs ``rlm_query`` as a child run and returns its answer, filling in ``record``."""

    async def __call__(self, request: SubcallRequest, record: SubcallRecord) -> str: ...


class SubcallService:
    """Answers one run's sub-calls (the bridge's :class:`~rlm_kernel.bridge.SubcallHandler`).

    Args:
        sub: the run's sub-model.
        budget: the run's account of the tree's budget.
        limits: the run's limits (``sub_max_tokens``).
        children: starts child runs; ``None`` at the maximum depth, where ``rlm_query`` is a
            plain sub-model call.
        handoff_dir: the folder the kernel writes child contexts in (the only one it may name).
        on_subcall: hook called as ``on_subcall(record=)`` after each sub-call.
        on_late: called as ``on_late(cell_id, records)`` when a recorded cell's sub-calls
            change after it was recorded.
        tools: the host tools the kernel's code may call (recorded like sub-calls, kind
            ``tool``, but no model calls: they spend no tokens and no sub-call budget).
        wrap: applied to each model resolved by name (``llm_query(model=...)``), e.g. a
            model-call cache's ``wrap``.
        sampling: the keywords sent with each sub-model call (``temperature``, ``seed``).
    """

    def __init__(
        self,
        *,
        sub: LLM,
        budget: Budget,
        limits: Limits,
        children: ChildStarter | None = None,
        handoff_dir: Path | None = None,
        on_subcall: Callable[..., Any] | None = None,
        on_late: Callable[[str, list[SubcallRecord]], Awaitable[None] | None] | None = None,
        tools: ToolBox | None = None,
        wrap: Callable[[LLM], LLM] | None = None,
        sampling: dict[str, Any] | None = None,
    ) -> None:
        self.sub = sub
        self.sampling = dict(sampling or {})
        self.budget = budget
        self.limits = limits
        self.children = children
        self.handoff_dir = handoff_dir.resolve() if handoff_dir is not None else None
        self.on_subcall = on_subcall
        self.on_late = on_late
        self.wrap = wrap
        self.models: dict[str, LLM] = {sub.name: sub}
        self.book: ReplayBook | None = None
        self.final_value: str | None = None
        self.tools = tools
        self.tool_calls = 0
        self._ids = 0
        self._cells: dict[str | None, list[SubcallRecord]] = {}
        self._recorded: set[str] = set()
        # Models the API refused (unknown model, key refused): later calls fail at once.
        self.refused: dict[str, ModelRefused] = {}
        self._refusals: dict[tuple[str | None, str], SubcallRecord] = {}
        self._book_refusal: Exception | None = None

    # -- the bridge calls these ---------------------------------------------------------------

    async def subcall(self, request: SubcallRequest) -> str:
        """Answer one prompt of the kernel's code; see the bridge for how errors travel."""
        handoff = self._take_handoff(request.context)
        if self.book is not None:
            if handoff is not None:
                handoff.unlink(missing_ok=True)
            return await self._from_book(request.prompt)
        try:
            self.budget.reserve_subcall()
        except BudgetExceeded as e:
            if handoff is not None:
                handoff.unlink(missing_ok=True)
            await self._refuse(request, e)
            raise
        record = self._new_record(request)
        if request.cell in self._recorded:
            record.note = "made after its cell had finished (a thread that outlived the cell)"
        # Kept before the call so records keep the order the calls were made in.
        self._cells.setdefault(request.cell, []).append(record)
        try:
            if record.kind == "rlm" and self.children is not None:
                request = SubcallRequest(
                    request.prompt, request.kind, request.model, request.cell, _as_context(handoff)
                )
                handoff = None  # the child owns the file now
                return await self.children(request, record)
            return await self._ask(request, record, handoff)
        except asyncio.CancelledError:
            record.error = ErrorRecord(
                "SubcallCancelled", "cut short: the cell's time limit ran out or the run stopped"
            )
            raise
        except Exception as e:
            record.error = ErrorRecord.from_exception(e)
            raise
        finally:
            if handoff is not None:
                handoff.unlink(missing_ok=True)
            await run_hook(self.on_subcall, record=record)
            if request.cell in self._recorded and self.on_late is not None:
                await run_hook(self.on_late, request.cell, self._cells[request.cell])

    async def tool(self, request: ToolRequest) -> str:
        """Run one host tool call and record it on its cell; return its result's JSON text."""
        text = request_text(request.name, request.args, request.kwargs)
        if self.book is not None:
            return await self._from_book(text)
        self._ids += 1
        self.tool_calls += 1
        record = SubcallRecord(
            id=self._ids,
            kind="tool",
            model=request.name,
            prompt_sha256=prompt_sha256(text),
            prompt_chars=len(text),
            prompt_preview=text[:PROMPT_PREVIEW_CHARS],
            cell=request.cell,
        )
        if request.cell in self._recorded:
            record.note = "made after its cell had finished (a thread that outlived the cell)"
        self._cells.setdefault(request.cell, []).append(record)
        started = time.monotonic()
        try:
            if self.tools is None:
                raise ToolError(
                    f"this run has no host tools; {request.name!r} is not one",
                    tool=request.name,
                    cause="NameError",
                )
            record.response = await self.tools.call(request.name, request.args, request.kwargs)
            return record.response
        except asyncio.CancelledError:
            record.error = ErrorRecord(
                "SubcallCancelled", "cut short: the cell's time limit ran out or the run stopped"
            )
            raise
        except Exception as e:
            record.error = ErrorRecord.from_exception(e)
            raise
        finally:
            record.latency_s = round(time.monotonic() - started, 4)
            await run_hook(self.on_subcall, record=record)
            if request.cell in self._recorded and self.on_late is not None:
                await run_hook(self.on_late, request.cell, self._cells[request.cell])

    async def _refuse(self, request: SubcallRequest, error: BudgetExceeded) -> None:
        """Record a call the budget refused: once per cell and limit, then only counted.

        Code that ignores the refusal and keeps calling would otherwise add a record per call
        (tens of thousands a second); the first is kept, so a replay meets the same refusal,
        and the rest raise its ``count``.
        """
        key = (request.cell, error.limit)
        record = self._refusals.get(key)
        if record is not None:
            record.count += 1
            # A cell already recorded hears of its refusals at a decreasing rate: 2, 4, 8, ...
            if request.cell in self._recorded and record.count & (record.count - 1) == 0:
                await self._tell_late(request.cell)
            return
        record = self._new_record(
            request,
            error=ErrorRecord.from_exception(error),
            note="refused by the budget; later refusals in this cell are counted in count",
        )
        self._refusals[key] = record
        self._cells.setdefault(request.cell, []).append(record)
        await run_hook(self.on_subcall, record=record)
        await self._tell_late(request.cell)

    def _new_record(self, request: SubcallRequest, **fields: Any) -> SubcallRecord:
        """The record of one model call the kernel's code asked for, numbered in call order."""
        self._ids += 1
        return SubcallRecord(
            id=self._ids,
            kind="rlm" if request.kind == "rlm" else "llm",
            model=request.model or self.sub.name,
            prompt_sha256=prompt_sha256(request.prompt),
            prompt_chars=len(request.prompt),
            prompt_preview=request.prompt[:PROMPT_PREVIEW_CHARS],
            cell=request.cell,
            **fields,
        )

    async def _tell_late(self, cell: str | None) -> None:
        if cell in self._recorded and self.on_late is not None:
            await run_hook(self.on_late, cell, self._cells[cell])

    async def final(self, value: str, *, via: str, cell: str | None = None) -> None:
        """Take the final answer sent from the kernel."""
        self.final_value = value

    # -- the loop calls these -----------------------------------------------------------------

    def take(self, cell_id: str) -> list[SubcallRecord]:
        """The sub-calls a cell made so far; later ones for it reach ``on_late``."""
        self._recorded.add(cell_id)
        return list(self._cells.get(cell_id, []))

    def model(self, name: str | None) -> LLM:
        """The run's sub-model, or another one by name (resolved once)."""
        if name is None:
            return self.sub
        if name not in self.models:
            llm = resolve(name)
            self.models[name] = self.wrap(llm) if self.wrap is not None else llm
        return self.models[name]

    # -- internals ------------------------------------------------------------------------------

    async def _from_book(self, prompt: str) -> str:
        assert self.book is not None
        (call,) = self.book.take([prompt])
        if call is None and self._book_refusal is not None:
            raise self._book_refusal  # refused once, refused ever after (recorded once)
        if call is not None and call.cancelled:
            # Cut short by its cell's time limit in the recorded run: wait for the same cut.
            await asyncio.sleep(CANCELLED_WAIT_S)
        if call is None:
            return self.book.answer(prompt)  # nothing was used up: this raises the miss
        failure = call.failure
        if failure is not None:
            if failure.type == "BudgetExceeded":
                self._book_refusal = failure.to_exception()
            raise failure.to_exception()
        assert call.response is not None
        return Reply(call.response, call.stop_reason)

    async def _ask(
        self, request: SubcallRequest, record: SubcallRecord, handoff: Path | None
    ) -> str:
        llm = self.model(request.model)
        record.model = llm.name
        prompt = request.prompt
        if record.kind == "rlm":
            record.note = "at the maximum depth: answered by the sub-model, not a child run"
            if handoff is not None:
                prompt = f"{prompt}\n\n{handoff.read_text(encoding='utf-8')}"
        if llm.name in self.refused:
            raise self.refused[llm.name]
        messages = [{"role": "user", "content": prompt}]
        shared = request.shared_prefix
        hint = None
        if shared and prompt_cache.worth_marking(request.batch, self.limits.max_concurrency):
            # Only now may a provider mark the prompt for caching: later prompts of the batch
            # re-read this prefix. A one-off prompt is never marked.
            hint = prompt_cache.SHARED_PREFIX.set(shared)
        try:
            completion = await llm_complete(
                llm, messages, max_tokens=self.limits.sub_max_tokens, **self.sampling
            )
        except ModelRefused as e:
            self.refused.setdefault(llm.name, e)
            raise
        finally:
            if hint is not None:
                prompt_cache.SHARED_PREFIX.reset(hint)
        self.budget.charge("sub", completion)
        record.response = completion.text
        record.latency_s = round(completion.latency_s, 4)
        record.usage = completion.usage
        record.cost_usd = completion.cost_usd
        record.retries = completion.retries
        record.stop_reason = completion.stop_reason
        record.cached = completion.cached
        return Reply(completion.text, completion.stop_reason)

    def _take_handoff(self, context: dict[str, str] | None) -> Path | None:
        if context is None:
            return None
        path = Path(context["path"]).resolve()
        # Only files in this run's hand-off folder: the kernel must not name host files.
        if self.handoff_dir is None or path.parent != self.handoff_dir:
            raise BridgeError(
                f"a child context must be written in the run's hand-off folder, not {path}"
            )
        if not path.is_file():
            raise BridgeError(f"the child context file {path} is missing")
        return path


def _as_context(path: Path | None) -> dict[str, str] | None:
    if path is None:
        return None
    return {"path": os.fspath(path), "kind": "json" if path.suffix == ".json" else "text"}
