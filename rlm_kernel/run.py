"""The RLM loop: the only module that composes kernel, bridge, models, budget and notebook.

``RLM.arun`` is the code; ``RLM.run`` is its one-line sync twin.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import hashlib
import inspect
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from . import notebook as notebook_io
from . import parse, prompts, runtime
from .bridge import BridgeServer
from .budget import Budget
from .context import ContextInfo, ContextInput, ContextWarning, prepare
from .errors import (
    BudgetExceeded,
    NotebookFormatError,
    OutputPathError,
    ReplayDiverged,
    RLMKernelError,
    RunStopped,
    UsageError,
)
from .kernel import ExecResult, KernelSession
from .llm import DEFAULT_ROOT_MODEL, DEFAULT_SUB_MODEL, LLM, resolve
from .notebook import Recorder
from .outputs import OutputCollector, render_text, truncate
from .replay import ReplayBook, resolve_context
from .types import Completion, Limits, Message, RunResult, Status, SubcallRecord

T = TypeVar("T")
Hook = Callable[..., object]
PROMPT_PREVIEW_CHARS = 200
PROBE_TIMEOUT_S = 10.0  # reading the variable names after a step
PROBE_OUTPUT_BYTES = 200_000
RUNS_DIR = "rlm-runs"


def run_sync(coro_fn: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """The sync twin of a coroutine function.

    Outside an event loop it uses ``asyncio.run`` (so Ctrl-C cancels the run and its clean-up
    runs); inside one (Jupyter) it hands the coroutine to jupyter_core's background runner.
    """

    @functools.wraps(coro_fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro_fn(*args, **kwargs))  # type: ignore[arg-type]
        from jupyter_core.utils import run_sync as jupyter_run_sync

        return jupyter_run_sync(coro_fn)(*args, **kwargs)  # type: ignore[arg-type]

    return wrapper


async def run_hook(hook: Hook | None, **kwargs: Any) -> None:
    """Call an optional hook with keyword arguments, awaiting it if it returns an awaitable."""
    if hook is None:
        return
    result = hook(**kwargs)
    if inspect.isawaitable(result):
        await result


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def default_notebook_path(run_id: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(RUNS_DIR) / f"run-{stamp}-{run_id[:6]}.ipynb"


def check_notebook_path(path: Path) -> Path:
    """Make sure a notebook can be written at ``path``; raise :class:`OutputPathError` if not."""
    if path.suffix != ".ipynb":
        raise OutputPathError(f"the run notebook must end in .ipynb: {path}")
    if path.is_dir():
        raise OutputPathError(f"{path} is a directory; give a notebook file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".rlm-probe-"):
            pass
    except OSError as e:
        raise OutputPathError(f"cannot write the notebook {path}: {e.strerror or e}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"cannot write the notebook {path}: permission denied")
    return path.resolve()


class RLM:
    """A Recursive Language Model whose REPL is a Jupyter kernel.

    Args:
        model: the root model: ``"provider:model"``, an :class:`~rlm_kernel.llm.LLM`, or a
            callable ``(messages) -> str``.
        sub_model: the model answering ``llm_query`` and friends, given the same ways.
        limits: a :class:`~rlm_kernel.types.Limits`; keyword arguments named like its fields
            (``max_steps=10``) override single fields.
        on_step: hook called after each model reply as ``on_step(step=, max_steps=, text=,
            blocks=, usage=, subcalls=, cost_usd=, elapsed_s=)``.
        on_output: hook called as ``on_output(step=, block=, status=, shown=)`` after each block.
        on_subcall: hook called as ``on_subcall(record=)`` after each sub-call.
        kernel_name: the Jupyter kernelspec to run the code in.
        embed_context: also store the context's text in the notebook (up to
            ``context.EMBED_LIMIT_CHARS``), so the notebook replays without its context file.
        approve: a human in the loop, called before each code block runs as
            ``approve(step=, block=, code=)`` (sync or async). It returns the code to run (the
            model's, or an edited version), ``None`` to skip the block, or ``False`` to stop the
            run (status ``interrupted``, stop reason ``stopped``). An edited block runs as
            edited; the cell's ``metadata.rlm.approval`` keeps the model's original.
            ``approve=True`` asks a person: buttons in Jupyter, a prompt in a terminal
            (``rlm_kernel.live``).
        display: the live widget in Jupyter (``rlm_kernel.live.LiveDisplay``): ``None`` shows it
            in a Jupyter kernel when no hook is given, ``True`` always, ``False`` never.
        session: where the model's code runs: a callable taking ``setup_code=`` and returning
            an async context manager with ``execute(code, *, timeout, collector)``. By default
            a fresh :class:`~rlm_kernel.kernel.KernelSession` per run;
            :class:`rlm_kernel.here.HereSession` runs it in the current IPython kernel.
        system_prompt: a template for the system prompt, with the placeholders of
            ``rlm_kernel.prompts.PLACEHOLDERS`` (see docs/prompt.md); ``None`` uses the default.
            The rendered prompt is recorded in the notebook's ``metadata.rlm.system_prompt``.
    """

    def __init__(
        self,
        model: str | LLM | Callable[..., object] = DEFAULT_ROOT_MODEL,
        sub_model: str | LLM | Callable[..., object] = DEFAULT_SUB_MODEL,
        *,
        limits: Limits | None = None,
        on_step: Hook | None = None,
        on_output: Hook | None = None,
        on_subcall: Hook | None = None,
        kernel_name: str = "python3",
        embed_context: bool = False,
        approve: Hook | bool | None = None,
        display: bool | None = None,
        session: Callable[..., Any] | None = None,
        system_prompt: str | None = None,
        **limit_overrides: Any,
    ) -> None:
        try:
            self.limits = dataclasses.replace(limits or Limits(), **limit_overrides)
        except TypeError:
            known = ", ".join(f.name for f in dataclasses.fields(Limits))
            unknown = ", ".join(sorted(set(limit_overrides) - set(known.split(", "))))
            raise UsageError(f"unknown RLM option(s): {unknown}; limits are: {known}") from None
        except ValueError as e:
            raise UsageError(str(e)) from None
        if self.limits.max_depth > 1:
            warnings.warn(
                "rlm_query does not start child runs yet: it answers with the sub-model, as at "
                "the maximum depth, whatever max_depth is",
                UserWarning,
                stacklevel=2,
            )
        try:
            self.system_prompt = (
                None if system_prompt is None else prompts.check_template(system_prompt)
            )
        except ValueError as e:
            raise UsageError(str(e)) from None
        self.model = model
        self.sub_model = sub_model
        self.hooks = {"on_step": on_step, "on_output": on_output, "on_subcall": on_subcall}
        self.kernel_name = kernel_name
        self.embed_context = embed_context
        self.approve = approve
        self.display = display
        self.session = session

    async def arun(
        self,
        question: str,
        context: ContextInput,
        notebook: str | os.PathLike | None = None,
    ) -> RunResult:
        """Answer ``question`` over ``context``, recording the run as a notebook.

        Raises:
            UsageError: bad input (empty question, unreadable context, unknown provider, missing
                API key, unwritable notebook path); nothing has run yet.
        """
        if not isinstance(question, str) or not question.strip():
            raise UsageError("the question is empty; ask something about the context")
        return await self._start(question.strip(), context, notebook, origin=None)

    async def aresume(
        self,
        notebook: str | os.PathLike,
        from_step: int,
        out: str | os.PathLike | None = None,
    ) -> RunResult:
        """Fork a recorded run at ``from_step``: replay the steps before it, then go on live.

        The kernel's state is rebuilt by running the recorded code of steps ``1 .. from_step - 1``
        with their sub-calls answered from the record; the root model's conversation is rebuilt
        from the recorded replies and what the model was shown. From ``from_step`` on, this
        RLM's models answer. The new notebook (``out``, by default ``<name>-from-<K>.ipynb``
        beside the parent) starts with copies of the parent's earlier steps and records
        ``parent {notebook, run_id, step}``.

        Raises:
            UsageError: the notebook is not a run notebook, its context is missing or altered,
                or ``from_step`` is not one of its steps.
        """
        origin = _Origin.load(Path(notebook), from_step)
        target = Path(out) if out else origin.default_out()
        return await self._start(origin.question, origin.context, target, origin=origin)

    async def _start(
        self,
        question: str,
        context: ContextInput,
        notebook: str | os.PathLike | None,
        origin: _Origin | None,
    ) -> RunResult:
        run_id = uuid.uuid4().hex[:12]
        root = resolve(self.model)
        sub: LLM | None = None
        try:
            sub = resolve(self.sub_model)
            nb_path = Path(notebook) if notebook else default_notebook_path(run_id)
            nb_path = check_notebook_path(nb_path)
            info = prepare(context, nb_path.with_suffix(""))
            for message in info.warnings:
                warnings.warn(message, ContextWarning, stacklevel=3)
            context_meta = info.to_metadata(nb_path.parent)
            if self.embed_context:
                context_meta["embedded"] = info.embedded_text()
            run = _Run(self, question, info, context_meta, nb_path, run_id, root, sub, origin)
            live = None
            if self.display is not False or self.approve is True:
                # Imported here: the live display is for Jupyter and needs ipywidgets.
                from . import live as live_ui

                run.hooks, run.approve, live = live_ui.attach(
                    display=self.display,
                    hooks=self.hooks,
                    approve=self.approve,
                    notebook=nb_path,
                    max_steps=self.limits.max_steps,
                    question=question,
                )
        except BaseException:
            await close_models([m for m in (root, sub) if m is not None])
            raise
        return await (live.run(run.execute()) if live else run.execute())

    run = run_sync(arun)
    resume = run_sync(aresume)


def recorded_models(notebook: str | os.PathLike) -> tuple[str, str]:
    """The root and sub-model names a run notebook records.

    Raises:
        UsageError: the file is not a run notebook.
    """
    try:
        models = notebook_io.load(notebook).metadata.rlm.get("models") or {}
    except NotebookFormatError as e:
        raise UsageError(str(e)) from None
    return str(models.get("root") or DEFAULT_ROOT_MODEL), str(
        models.get("sub") or DEFAULT_SUB_MODEL
    )


@dataclasses.dataclass
class _Origin:
    """A recorded run that a new run forks from, at ``step``."""

    path: Path
    meta: dict[str, Any]
    step: int
    prefix: list[dict[str, Any]]  # notebook.steps() entries before ``step``
    book: ReplayBook
    context: ContextInput

    @classmethod
    def load(cls, path: Path, step: int) -> _Origin:
        try:
            nb = notebook_io.load(path)
        except NotebookFormatError as e:
            raise UsageError(str(e)) from None
        meta = dict(nb.metadata.rlm)
        recorded = notebook_io.steps(nb)
        numbers = [s["step"] for s in recorded if s["code_cells"] or s["markdown_cell"]]
        if not numbers or not 1 <= step <= max(numbers):
            last = max(numbers) if numbers else 0
            raise UsageError(f"--from-step must be between 1 and {last} for {path}, not {step}")
        found = resolve_context(meta, path.parent)
        context: ContextInput = found.path if found.path is not None else found.value()
        prefix = [s for s in recorded if s["step"] < step]
        return cls(path, meta, step, prefix, ReplayBook.from_notebook(nb), context)

    @property
    def question(self) -> str:
        return str(self.meta.get("question") or "")

    def default_out(self) -> Path:
        return self.path.with_name(f"{self.path.stem}-from-{self.step}.ipynb")

    def parent_record(self, new_notebook: Path) -> dict[str, Any]:
        return {
            "notebook": Path(os.path.relpath(self.path.resolve(), new_notebook.parent)).as_posix(),
            "run_id": self.meta.get("run_id"),
            "step": self.step,
        }


class _Run:
    """The state of one run: conversation, accounts, the kernel and the notebook being written."""

    def __init__(
        self,
        rlm: RLM,
        question: str,
        info: ContextInfo,
        context_meta: dict[str, Any],
        nb_path: Path,
        run_id: str,
        root: LLM,
        sub: LLM,
        origin: _Origin | None = None,
    ) -> None:
        self.rlm = rlm
        self.hooks = dict(rlm.hooks)
        self.approve = rlm.approve
        self.origin = origin
        self.replaying = False
        self.limits = rlm.limits
        self.question = question
        self.info = info
        self.run_id = run_id
        self.root = root
        self.sub = sub
        self.models: dict[str, LLM] = {root.name: root, sub.name: sub}
        self.budget = Budget(self.limits)
        self.system = prompts.system_prompt(
            info,
            self.limits,
            sub_model=sub.name,
            models=[root.name],
            # rlm_query does not start child runs yet: it is a plain sub-model call, as at the
            # maximum depth, and the prompt must say so whatever max_depth is.
            max_depth=1,
            template=rlm.system_prompt,
        )
        self.messages: list[Message] = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": prompts.first_message(question)},
        ]
        self.variables: list[str] | None = None
        self.cell_subcalls: list[SubcallRecord] = []
        self.subcall_ids = 0
        self.final_value: str | None = None
        self.steps = 0
        self.recorder = Recorder(
            nb_path,
            {
                "run_id": run_id,
                "status": "running",
                "question": question,
                "models": {"root": root.name, "sub": sub.name},
                "limits": self.limits.to_dict(),
                "system_prompt": self.system,
                "context": context_meta,
                "started": _now(),
                "parent": origin.parent_record(nb_path) if origin else None,
            },
        )

    # -- the bridge calls these (bridge.SubcallHandler) -------------------------------------

    async def subcall(self, prompt: str, *, model: str | None, kind: str) -> str:
        if self.replaying and self.origin is not None:
            return self.origin.book.answer(prompt)
        self.subcall_ids += 1
        record = SubcallRecord(
            id=self.subcall_ids,
            kind="rlm" if kind == "rlm" else "llm",
            model=model or self.sub.name,
            prompt_sha256=hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest(),
            prompt_chars=len(prompt),
            prompt_preview=prompt[:PROMPT_PREVIEW_CHARS],
        )
        # Appended before the call so records keep the order the calls were made in; a call
        # the budget refuses is recorded too, so a replay meets the same refusal.
        self.cell_subcalls.append(record)
        try:
            self.budget.reserve_subcall()
            llm = self._model(model)
            record.model = llm.name
            completion = await llm.complete(
                [{"role": "user", "content": prompt}], max_tokens=self.limits.sub_max_tokens
            )
        except Exception as e:
            # The text the kernel's code saw (the bridge prefixes the class name).
            record.error = f"{type(e).__name__}: {e}"
            record.retries = getattr(e, "retries", 0)
            raise
        else:
            self.budget.charge("sub", completion)
            record.response = completion.text
            record.latency_s = round(completion.latency_s, 4)
            record.usage = completion.usage
            record.cost_usd = completion.cost_usd
            record.retries = completion.retries
        finally:
            await run_hook(self.hooks["on_subcall"], record=record)
        return completion.text

    async def final(self, value: str, *, via: str) -> None:
        self.final_value = value

    def _model(self, name: str | None) -> LLM:
        if name is None:
            return self.sub
        if name not in self.models:
            self.models[name] = resolve(name)
        return self.models[name]

    # -- the loop ---------------------------------------------------------------------------

    async def execute(self) -> RunResult:
        status: Status = "error"
        stop_reason: str | None = None
        error: str | None = None
        answer: str | None = None
        self.recorder.save()
        work = Path(tempfile.mkdtemp(prefix="rlm-b-"))
        try:
            async with BridgeServer(
                self, unix_path=work / "bridge.sock", max_concurrency=self.limits.max_concurrency
            ) as bridge:
                setup = runtime.bootstrap_code(
                    runtime.__file__,
                    address=bridge.address,
                    token=bridge.token,
                    context_path=str(self.info.path),
                    context_kind=self.info.kind,
                )
                # A run's own kernel dies with the run (no history, a scratch folder), so it is
                # stopped at once rather than asked to shut down, which ipykernel can hang on.
                session = self.rlm.session or functools.partial(
                    KernelSession, kernel_name=self.rlm.kernel_name, shutdown_grace=0
                )
                async with session(setup_code=setup) as ks:
                    answer, stop_reason = await self._loop(ks)
            status = "answered" if answer is not None else "no_answer"
        except RunStopped:
            status, stop_reason = "interrupted", "stopped"
        except (KeyboardInterrupt, asyncio.CancelledError):
            status, stop_reason, error = "interrupted", "interrupted", "the run was interrupted"
            raise
        except RLMKernelError as e:
            error = str(e)
        except Exception as e:  # the notebook records any failure before it propagates
            error = f"{type(e).__name__}: {e}"
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
            self._update_meta()
            try:
                self.recorder.finish(
                    status=status, stop_reason=stop_reason, answer=answer, error=error
                )
            finally:
                await close_models(self.models.values())
        return RunResult(
            answer=answer,
            status=status,
            notebook=str(self.recorder.path),
            run_id=self.run_id,
            stop_reason=stop_reason,
            steps=self.steps,
            subcalls=self.budget.subcalls,
            usage=dict(self.budget.usage),
            cost_usd=self.budget.cost_usd,
            duration_s=self.budget.elapsed(),
            error=error,
        )

    async def _loop(self, ks: KernelSession) -> tuple[str | None, str]:
        first = await self._replay_prefix(ks) if self.origin else 1
        for step in range(first, self.limits.max_steps + 1):
            if stop := self.budget.exhausted():
                return await self._last_call(ks, stop), stop
            try:
                completion = await self._ask_root()
            except BudgetExceeded:
                return await self._last_call(ks, "timeout"), "timeout"
            self.steps = step
            text = completion.text
            # The API refuses an empty assistant turn in the history.
            self.messages.append({"role": "assistant", "content": text or "(empty reply)"})
            blocks = parse.code_blocks(text)
            self.recorder.add_step(
                step=step,
                markdown=parse.prose(text, functools.partial(_code_marker, step)),
                raw=text,
                usage=completion.usage.to_dict(),
                latency_s=round(completion.latency_s, 4),
                extra=_completion_extra(completion),
            )
            await run_hook(
                self.hooks["on_step"],
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
                reports.append(await self._approved_block(ks, step, n, block.code, share))
                if self.final_value is not None:
                    break
            found = parse.final_answer(text) if self.final_value is None else None
            # An answer written next to code that failed was written blind: show the error.
            rejected = found is not None and any(r.status != "ok" for r in reports)
            if found is not None and not rejected:
                await self._take_final(ks, step, len(reports) + 1, found, reports)
            self._update_meta()
            self.recorder.save()
            if self.final_value is not None:
                return self.final_value, "final"
            if reports:
                self.variables = await self._variables(ks)
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
                spent=self._spent(),
                limits=self.limits,
                stop=stop,
            )
            if stop is not None:
                return await self._last_call(ks, stop, feedback), stop
            self._tell(feedback)
        return await self._last_call(ks, "max_steps"), "max_steps"

    async def _replay_prefix(self, ks: KernelSession) -> int:
        """Re-run the parent's steps before the fork; return the first step to take live."""
        assert self.origin is not None
        self.replaying = True
        try:
            for entry in self.origin.prefix:
                step, md = entry["step"], entry["markdown_cell"]
                raw = md.metadata.rlm.get("raw", "") if md is not None else ""
                if md is not None:
                    recorded = dict(md.metadata.rlm)
                    self.recorder.add_step(
                        step=step,
                        markdown=md.source.split("\n\n", 1)[-1],
                        raw=raw,
                        usage=recorded.pop("usage", None) or {},
                        latency_s=recorded.pop("latency_s", None) or 0.0,
                        extra={k: v for k, v in recorded.items() if k not in _STEP_KEYS},
                    )
                reports = [await self._replay_cell(ks, cell) for cell in entry["code_cells"]]
                self.messages.append({"role": "assistant", "content": raw})
                feedback = prompts.feedback(
                    reports, step=step, max_steps=self.limits.max_steps, question=self.question
                )
                self._tell(feedback)
                self.steps = step
        finally:
            self.replaying = False
            self.final_value = None  # an answer the parent gave later does not count here
        self._update_meta()
        self.recorder.save()
        return self.origin.step

    async def _replay_cell(self, ks: KernelSession, cell: Any) -> prompts.BlockReport:
        rlm = cell.metadata.rlm
        recorded = rlm.get("exec") or {}
        result = await ks.execute(cell.source, timeout=self.budget.cell_timeout())
        if result.status != recorded.get("status"):
            raise ReplayDiverged(
                f"replaying step {rlm.get('step')}, block {rlm.get('block')} of "
                f"{self.origin.path if self.origin else 'the parent run'} ended {result.status}, "
                f"the recorded run {recorded.get('status')}: the kernel's state cannot be rebuilt"
            )
        self.recorder.add_code(
            step=rlm["step"],
            block=rlm["block"],
            source=cell.source,
            outputs=cell.outputs,
            execution_count=cell.execution_count,
            exec=dict(recorded),
            subcalls=list(rlm.get("subcalls") or []),
            tags=[t for t in cell.metadata.get("tags", []) if t != "rlm-code"],
        )
        return prompts.BlockReport(
            status=str(recorded.get("status")),
            shown=str(recorded.get("shown", "")),
            output_chars=int(recorded.get("output_chars") or 0),
        )

    async def _ask_root(self, grace: float | None = None) -> Completion:
        """Ask the root model; ``grace`` is the deadline of a last call after the time is up."""
        if grace is None:
            self.budget.check_time()
        remaining = self.budget.remaining_time() if grace is None else grace
        coro = self.root.complete(self.messages, max_tokens=self.limits.max_tokens)
        try:
            # wait_for wraps the call in a task; without a deadline there is nothing to enforce.
            completion = await (coro if remaining is None else asyncio.wait_for(coro, remaining))
        except asyncio.TimeoutError:
            limit = self.limits.timeout or 0
            raise BudgetExceeded("time (s)", self.budget.elapsed(), limit) from None
        self.budget.charge("root", completion)
        return completion

    async def _approved_block(
        self, ks: KernelSession, step: int, block: int, code: str, limit: int
    ) -> prompts.BlockReport:
        """Run a block, first asking the human in the loop when there is one."""
        if self.approve is None:
            return await self._run_block(ks, step, block, code, limit=limit)
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
        return await self._run_block(
            ks, step, block, decision, limit=limit, extra={"approval": approval}
        )

    async def _run_block(
        self,
        ks: KernelSession,
        step: int,
        block: int,
        code: str,
        tags: tuple[str, ...] = (),
        limit: int | None = None,
        extra: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> prompts.BlockReport:
        self.cell_subcalls = []
        # The notebook keeps the first max_cell_output_bytes; the collector also keeps the end
        # of what went past that, so the model is shown the real head and tail.
        limit = limit or self.limits.max_output_chars
        collector = OutputCollector(self.limits.max_cell_output_bytes, tail_chars=limit)
        timeout = self.budget.cell_timeout() if timeout is None else timeout
        result = await ks.execute(code, timeout=timeout, collector=collector)
        full = render_text(result.outputs)
        kept = render_text(result.outputs[:-1]) if collector.truncated else full  # no marker
        if collector.dropped_tail:
            full += f"...\n{collector.dropped_tail}"
        shown = truncate(full, limit) + _status_note(result)
        produced = len(kept) + collector.dropped_chars
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
            subcalls=[r.to_dict() for r in self.cell_subcalls],
            tags=("rlm-code", *tags),
            extra=extra,
        )
        await run_hook(
            self.hooks["on_output"], step=step, block=block, status=result.status, shown=shown
        )
        return prompts.BlockReport(status=result.status, shown=shown, output_chars=produced)

    async def _take_final(
        self,
        ks: KernelSession,
        step: int,
        block: int,
        found: parse.FinalAnswer,
        reports: list[prompts.BlockReport],
        timeout: float | None = None,
    ) -> None:
        if found.kind == "FINAL":
            self.final_value = found.value
            return
        # FINAL_VAR names a kernel variable: evaluate it as a recorded cell so replay reproduces it.
        code = f"FINAL_VAR({found.value!r})"
        reports.append(
            await self._run_block(ks, step, block, code, tags=("rlm-final",), timeout=timeout)
        )

    async def _last_call(
        self, ks: KernelSession, reason: str, feedback: str | None = None
    ) -> str | None:
        """One more reply, asking for the best answer, once steps, money or time run out.

        ``feedback`` is the last step's feedback, already ending in the request; without it the
        request joins the pending user turn, so user turns never follow each other.
        """
        self._tell(feedback or prompts.last_call(self.question, reason=reason))
        # After the time limit the last call and its FINAL_VAR get a short grace of their own.
        grace = _last_call_grace(self.limits) if reason == "timeout" else None
        try:
            completion = await self._ask_root(grace)
        except BudgetExceeded:
            return None
        step = self.steps = self.steps + 1
        self.recorder.add_step(
            step=step,
            markdown=parse.prose(completion.text, lambda n: "*[code not run: no steps left]*"),
            raw=completion.text,
            usage=completion.usage.to_dict(),
            latency_s=round(completion.latency_s, 4),
            extra={"last_call": True, **_completion_extra(completion)},
        )
        self.messages.append({"role": "assistant", "content": completion.text or "(empty reply)"})
        if found := parse.final_answer(completion.text):
            await self._take_final(ks, step, 1, found, [], timeout=grace)
        self._update_meta()
        self.recorder.save()
        return self.final_value

    def _tell(self, text: str) -> None:
        """Add a user turn, joined to the last one if that is a user turn too."""
        last = self.messages[-1]
        if last["role"] == "user":
            self.messages[-1] = {"role": "user", "content": f"{last['content']}\n\n{text}"}
        else:
            self.messages.append({"role": "user", "content": text})

    def _spent(self) -> prompts.Spent:
        return prompts.Spent(
            steps=self.steps,
            subcalls=self.budget.subcalls,
            cost_usd=self.budget.priced_cost,
            elapsed_s=self.budget.elapsed(),
            unpriced=self.budget.unpriced_calls > 0,
        )

    async def _variables(self, ks: KernelSession) -> list[str] | None:
        """The model's variable names now, for the feedback; ``None`` if they cannot be read."""
        # A kernel session keeps this probe out of the history (the cells keep their numbers).
        quiet = {"store_history": False} if isinstance(ks, KernelSession) else {}
        collector = OutputCollector(PROBE_OUTPUT_BYTES)
        result = await ks.execute(
            prompts.VARIABLES_PROBE, timeout=PROBE_TIMEOUT_S, collector=collector, **quiet
        )
        if result.status != "ok":
            return None
        return prompts.parse_variables(render_text(result.outputs))

    def _update_meta(self) -> None:
        self.recorder.meta.update(
            steps=self.steps,
            subcalls=self.budget.subcalls,
            usage={role: u.to_dict() for role, u in self.budget.usage.items()},
            cost_usd=self.budget.cost_usd,
        )


async def close_models(models: Iterable[LLM]) -> None:
    """Close the HTTP clients of models that have an ``aclose`` (an optional capability)."""
    for llm in models:
        aclose = getattr(llm, "aclose", None)
        if aclose is not None:
            await run_hook(aclose)


_STEP_KEYS = frozenset({"step", "role", "raw"})  # set by Recorder.add_step itself
_CUT_OFF = frozenset({"max_tokens", "length"})  # stop reasons of a reply cut at the token limit


def _last_call_grace(limits: Limits) -> float:
    """Seconds a last call may take after the run's time is up: a fifth of it, 5 to 60 s."""
    return min(60.0, max(5.0, (limits.timeout or 0) / 5))


def _completion_extra(completion: Completion) -> dict[str, Any]:
    return {
        "model": completion.model,
        "cost_usd": completion.cost_usd,
        "retries": completion.retries,
        "stop_reason": completion.stop_reason,
    }


def _code_marker(step: int, block: int) -> str:
    return f"*[code cell {step}.{block} below]*"


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
