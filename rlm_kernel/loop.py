"""The step loop of one run: ask the root model, run its code, show it what happened, repeat.

It keeps the conversation and records each step and code cell through the
:class:`~rlm_kernel.record.Recorder`; sub-calls are the :class:`~rlm_kernel.subcalls.
SubcallService`'s, which hands each cell its records by cell id. The human in the loop
(``approve``) is asked before each block runs.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from typing import Any

from . import parse, prompts
from .answer import AnswerSchema
from .budget import Budget
from .errors import BudgetExceeded, ModelError, ModelRefused, RunStopped
from .hooks import run_hook
from .kernel import ExecResult
from .llm import LLM
from .llm import complete as llm_complete
from .outputs import OutputCollector
from .record import FINAL_TAG, NOT_RUN_MARKER, Recorder, code_cell_id, code_marker
from .session import Session
from .subcalls import SubcallService
from .types import Completion, Limits, Message

__all__ = ["StepLoop", "spent_of"]

_CUT_OFF = frozenset({"max_tokens", "length"})  # stop reasons of a reply cut at the token limit


class StepLoop:
    """The conversation with the root model and the cells it makes.

    Args:
        root: the root model.
        question: the run's question.
        system: the rendered system prompt.
        limits: the run's limits (``max_steps`` is this run's own).
        budget: the run's account of the tree's budget.
        recorder: the run notebook being written.
        service: the run's sub-call service (records, final answer).
        hooks: ``on_step``, ``on_output`` and ``on_step_end`` (optional, sync or async).
        approve: the human in the loop, or ``None``.
        answer_schema: what the final value must match; a value that does not is recorded as
            rejected, and the model is told why and asked again (the next step).
        sampling: the keywords sent with each root call (``temperature``, ``seed``), if any.
    """

    def __init__(
        self,
        *,
        root: LLM,
        question: str,
        system: str,
        limits: Limits,
        budget: Budget,
        recorder: Recorder,
        service: SubcallService,
        hooks: dict[str, Any],
        approve: Callable[..., Any] | None = None,
        answer_schema: AnswerSchema | None = None,
        sampling: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.sampling = dict(sampling or {})
        self.step_retry: str | None = None  # why the last root call was made twice, if it was
        self.question = question
        self.limits = limits
        self.budget = budget
        self.recorder = recorder
        self.service = service
        self.hooks = hooks
        self.approve = approve
        self.answer_schema = answer_schema
        self.value: Any = None  # the checked final value, with an answer schema
        self.rejected = 0
        self.steps = 0
        self.variables: list[str] | None = None  # the model's variable names, for the feedback
        self.messages: list[Message] = [
            {"role": "system", "content": system},
            {"role": "user", "content": prompts.first_message(question)},
        ]

    async def run(self, session: Session, *, first: int = 1) -> tuple[str | None, str]:
        """Take steps from ``first`` until an answer or a limit; return it and the stop reason.

        When the steps, the money or the time run out, one last call asks for the best answer.
        """
        for step in range(first, self.limits.max_steps + 1):
            if stop := self.budget.exhausted():
                return await self._last_call(session, stop), stop
            try:
                completion = await self._ask_root()
            except BudgetExceeded:
                return await self._last_call(session, "timeout"), "timeout"
            self.steps = step
            subcalls_before = self.budget.subcalls
            text = completion.text
            # The API refuses an empty assistant turn in the history.
            self.messages.append({"role": "assistant", "content": text or "(empty reply)"})
            blocks = parse.code_blocks(text)
            self.recorder.add_step(
                step=step,
                markdown=parse.prose(text, functools.partial(code_marker, step)),
                raw=text,
                usage=completion.usage.to_dict(),
                latency_s=round(completion.latency_s, 4),
                extra=self._completion_extra(completion),
            )
            await run_hook(
                self.hooks.get("on_step"),
                step=step,
                max_steps=self.limits.max_steps,
                text=text,
                blocks=len(blocks),
                usage=self.budget.usage,
                subcalls=self.budget.subcalls,
                cost_usd=self.budget.cost_usd,
                elapsed_s=self.budget.elapsed(),
            )
            reports = []
            # The blocks of one reply share the output budget, so a reply with many blocks
            # cannot grow the next prompt by more than max_output_chars.
            share = self.limits.max_output_chars // max(1, len(blocks))
            for n, block in enumerate(blocks, start=1):
                reports.append(await self._approved_block(session, step, n, block.code, share))
                self._stop_if_refused()
                if self.service.final_value is not None:
                    break
            found = parse.final_answer(text) if self.service.final_value is None else None
            # An answer written next to code that failed was written blind: show the error.
            rejected = found is not None and any(r.status != "ok" for r in reports)
            if found is not None and not rejected:
                await self._take_final(session, step, len(reports) + 1, found, reports)
            rejection = self._check_answer(step)
            self.save()
            await self._step_end(step, len(reports), subcalls_before)
            if self.service.final_value is not None:
                return self.service.final_value, "final"
            stop = self.budget.exhausted() or (
                "max_steps" if step == self.limits.max_steps else None
            )
            feedback = prompts.feedback(
                reports,
                step=step,
                max_steps=self.limits.max_steps,
                final_rejected=rejected,
                cut_off=completion.stop_reason in _CUT_OFF,
                question=self.question,
                variables=self.variables,
                spent=spent_of(self.budget, self.steps),
                limits=self.limits,
                stop=stop,
            )
            if rejection:
                feedback = f"{rejection}\n\n{feedback}"
            if stop is not None:
                return await self._last_call(session, stop, feedback), stop
            self.tell(feedback)
        return await self._last_call(session, "max_steps"), "max_steps"

    def tell(self, text: str) -> None:
        """Add a user turn, joined to the last one if that is a user turn too."""
        last = self.messages[-1]
        if last["role"] == "user":
            self.messages[-1] = {"role": "user", "content": f"{last['content']}\n\n{text}"}
        else:
            self.messages.append({"role": "user", "content": text})

    def record_totals(self) -> None:
        """Put the run's totals (its subtree's, for a tree) into the notebook's metadata."""
        self.recorder.meta.update(
            steps=self.steps,
            subcalls=self.budget.subcalls,
            usage={role: u.to_dict() for role, u in self.budget.usage.items()},
            cost_usd=self.budget.cost_usd,
        )
        if self.budget.cache_hits:
            self.recorder.meta["cache_hits"] = self.budget.cache_hits

    def save(self) -> None:
        """Write the run's totals into the notebook and save it (to disk in the background)."""
        self.record_totals()
        self.recorder.save(wait=False)

    # -- one step -----------------------------------------------------------------------------

    async def _ask_root(self, grace: float | None = None) -> Completion:
        """Ask the root model; ``grace`` is the deadline of a last call after the time is up."""
        if grace is None:
            self.budget.check_time()
        remaining = self.budget.remaining_time() if grace is None else grace
        try:
            # wait_for wraps the call in a task; without a deadline there is nothing to enforce.
            coro = self._complete()
            completion = await (coro if remaining is None else asyncio.wait_for(coro, remaining))
        except asyncio.TimeoutError:
            limit = self.limits.timeout or 0
            raise BudgetExceeded("time (s)", self.budget.elapsed(), limit) from None
        self.budget.charge("root", completion)
        return completion

    async def _complete(self) -> Completion:
        """One root call; a reply lost in transport (not an HTTP error) is asked for once more."""
        self.step_retry = None
        call = functools.partial(
            llm_complete,
            self.root,
            self.messages,
            max_tokens=self.limits.max_tokens,
            **self.sampling,
        )
        try:
            return await call()
        except ModelError as e:
            if not e.transient:
                raise
            first = str(e)
        try:
            completion = await call()
        except ModelError as e:
            raise ModelError(
                e.model,
                f"{str(e).removeprefix(f'{e.model}: ')} (the step was retried once; the first "
                f"attempt failed too: {first.removeprefix(f'{e.model}: ')})",
                retries=e.retries,
                transient=e.transient,
            ) from e
        self.step_retry = first
        return completion

    def _completion_extra(self, completion: Completion) -> dict[str, Any]:
        extra = _completion_extra(completion)
        if self.step_retry is not None:
            # The step's first call failed in transport; this reply is the second attempt's.
            extra["step_retry"] = {"attempts": 2, "first_error": self.step_retry}
        return extra

    async def _approved_block(
        self, session: Session, step: int, block: int, code: str, limit: int
    ) -> prompts.BlockReport:
        """Run a block, first asking the human in the loop when there is one."""
        if self.approve is None:
            return await self.run_block(session, step, block, code, limit=limit)
        decision = self.approve(step=step, block=block, code=code)
        if inspect.isawaitable(decision):
            decision = await decision
        if decision is False:
            raise RunStopped(f"stopped by the user before block {step}.{block}")
        if decision is None:
            shown = "[the user skipped this block; it did not run]"
            self.recorder.add_code(
                step=step,
                block=block,
                source=code,
                outputs=[],
                execution_count=None,
                exec={"status": "skipped", "duration_s": 0.0, "output_chars": 0, "shown": shown},
                subcalls=[],
                tags=("rlm-code",),
                extra={"approval": {"decision": "skipped"}},
            )
            return prompts.BlockReport(status="skipped", shown=shown, output_chars=0)
        if not isinstance(decision, str):
            raise TypeError(f"approve() returned {decision!r}; expected code, None or False")
        approval = (
            {"decision": "run"} if decision == code else {"decision": "edited", "original": code}
        )
        return await self.run_block(
            session, step, block, decision, limit=limit, extra={"approval": approval}
        )

    async def run_block(
        self,
        session: Session,
        step: int,
        block: int,
        code: str,
        tags: tuple[str, ...] = (),
        limit: int | None = None,
        extra: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> prompts.BlockReport:
        """Run one code block in ``session`` and record it as a code cell."""
        # The notebook keeps the first max_cell_output_bytes; the collector also keeps the end
        # of what went past that, so the model is shown the real head and tail.
        limit = limit or self.limits.max_output_chars
        collector = OutputCollector(self.limits.max_cell_output_bytes, tail_chars=limit)
        cell_id = code_cell_id(step, block)
        result = await session.execute(
            code,
            timeout=self.budget.cell_timeout() if timeout is None else timeout,
            collector=collector,
            cell_id=cell_id,
            # The variable names for the next feedback, in the same request: no round trip.
            user_expressions={"variables": prompts.VARIABLES_EXPRESSION},
        )
        names = prompts.variables_from_expression(result.user_expressions.get("variables"))
        if names is not None:
            self.variables = names
        shown = collector.shown(limit) + _status_note(result)
        produced = collector.output_chars
        self.recorder.add_code(
            step=step,
            block=block,
            source=code,
            outputs=result.outputs,
            execution_count=result.execution_count,
            exec={
                "status": result.status,
                "duration_s": round(result.duration_s, 4),
                "output_chars": produced,
                "shown": shown,
            },
            subcalls=self.service.take(cell_id),
            tags=("rlm-code", *tags),
            extra=extra,
        )
        await run_hook(
            self.hooks.get("on_output"), step=step, block=block, status=result.status, shown=shown
        )
        return prompts.BlockReport(status=result.status, shown=shown, output_chars=produced)

    async def _take_final(
        self,
        session: Session,
        step: int,
        block: int,
        found: parse.FinalAnswer,
        reports: list[prompts.BlockReport],
        timeout: float | None = None,
    ) -> None:
        if found.kind == "FINAL":
            self.service.final_value = found.value
            return
        # FINAL_VAR names a kernel variable: evaluate it as a recorded cell so replay reproduces it.
        code = f"FINAL_VAR({found.value!r})"
        reports.append(
            await self.run_block(session, step, block, code, tags=(FINAL_TAG,), timeout=timeout)
        )

    async def _last_call(
        self, session: Session, reason: str, feedback: str | None = None
    ) -> str | None:
        """One more reply, asking for the best answer, once steps, money or time run out.

        ``feedback`` is the last step's feedback, already ending in the request; without it the
        request joins the pending user turn, so user turns never follow each other.
        """
        self.tell(feedback or prompts.last_call(self.question, reason=reason))
        # After the time limit the last call and its FINAL_VAR get a short grace of their own.
        grace = _last_call_grace(self.limits) if reason == "timeout" else None
        try:
            completion = await self._ask_root(grace)
        except BudgetExceeded:
            return None
        step = self.steps = self.steps + 1
        self.recorder.add_step(
            step=step,
            markdown=parse.prose(completion.text, lambda n: NOT_RUN_MARKER),
            raw=completion.text,
            usage=completion.usage.to_dict(),
            latency_s=round(completion.latency_s, 4),
            extra={"last_call": True, **self._completion_extra(completion)},
        )
        self.messages.append({"role": "assistant", "content": completion.text or "(empty reply)"})
        subcalls_before = self.budget.subcalls
        if found := parse.final_answer(completion.text):
            await self._take_final(session, step, 1, found, [], timeout=grace)
        self._check_answer(step)  # no step is left to ask again: a rejected value is no answer
        self.save()
        await self._step_end(step, 0, subcalls_before, last_call=True)
        return self.service.final_value

    def _check_answer(self, step: int) -> str:
        """Check the step's final value against the answer schema; say why it was rejected.

        A rejected value is recorded on its step and withdrawn, so the run goes on.
        """
        final = self.service.final_value
        if final is None or self.answer_schema is None:
            return ""
        checked = self.answer_schema.check(final)
        if checked.ok:
            self.value = checked.value
            return ""
        self.rejected += 1
        self.recorder.reject_answer(step=step, value=final, problems=checked.problems)
        self.service.final_value = None
        return prompts.answer_rejected(checked.problems)

    def _stop_if_refused(self) -> None:
        """End the run when the API refused the sub-model: every later call would fail too."""
        if not self.service.refused:
            return
        first = next(iter(self.service.refused.values()))
        raise ModelRefused(
            first.model,
            f"{first.reason}; every call to this sub-model would fail the same way, so the run "
            "stopped (check --sub-model and its API key)",
            status=first.status,
        )

    async def _step_end(
        self, step: int, blocks: int, subcalls_before: int, *, last_call: bool = False
    ) -> None:
        """Report a step once its code has run, with the sub-calls it made."""
        await run_hook(
            self.hooks.get("on_step_end"),
            step=step,
            max_steps=self.limits.max_steps,
            blocks=blocks,
            step_subcalls=self.budget.subcalls - subcalls_before,
            usage=self.budget.usage,
            subcalls=self.budget.subcalls,
            cost_usd=self.budget.cost_usd,
            elapsed_s=self.budget.elapsed(),
            last_call=last_call,
        )


def spent_of(budget: Budget, steps: int) -> prompts.Spent:
    """What ``budget`` has spent, as the prompts state it."""
    return prompts.Spent(
        steps=steps,
        subcalls=budget.subcalls,
        cost_usd=budget.priced_cost,
        elapsed_s=budget.elapsed(),
        unpriced=budget.unpriced_calls > 0,
    )


def _last_call_grace(limits: Limits) -> float:
    """Seconds a last call may take after the run's time is up: a fifth of it, 5 to 60 s."""
    return min(60.0, max(5.0, (limits.timeout or 0) / 5))


def _completion_extra(completion: Completion) -> dict[str, Any]:
    extra = {
        "model": completion.model,
        "cost_usd": completion.cost_usd,
        "retries": completion.retries,
        "stop_reason": completion.stop_reason,
    }
    if completion.cached:
        extra["cached"] = True  # answered by the model-call cache; usage is the original's
    return extra


def _status_note(result: ExecResult) -> str:
    if result.status == "timeout":
        kept = "the kernel was restarted" if result.restarted else "your variables are kept"
        return f"\n[the cell was interrupted after {result.duration_s:.1f} s (time limit); {kept}]"
    if result.status == "kernel_died":
        return (
            "\n[the kernel died while running this cell and was restarted: `context` and the "
            "REPL functions are back, your other variables are gone]"
        )
    return ""
