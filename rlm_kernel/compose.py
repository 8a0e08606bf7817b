"""The composition of a run: the parts of one run, wired together, and what a run tree shares.

:class:`RunTree` holds what every run of one tree shares (the models, behind the model-call cache
if there is one; the concurrency cap; the warm kernels of child runs; the host tools), and
:meth:`RunTree.execute` is the one place a run is put together: a notebook
(:class:`~rlm_kernel.record.Recorder`), the context file, a bridge socket served by the run's
:class:`~rlm_kernel.subcalls.SubcallService`, a :class:`~rlm_kernel.session.Session` where the
code runs, and the :class:`~rlm_kernel.loop.StepLoop`. A child run (``rlm_query``) is composed
the same way one level down, with a child account of the budget. A :class:`RunSpec` is what
differs between the root and a child. :class:`rlm_kernel.run.RLM` builds the tree and the
root's spec.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _capture, prompts, runtime
from .answer import AnswerSchema
from .bridge import BridgeServer, socket_dir
from .budget import Budget
from .context import ContextInfo
from .errors import KernelStartError, RLMKernelError, RunStopped
from .fork import Fork, replay_prefix
from .hooks import Hook, run_hook
from .kernel import KernelSession
from .llm import LLM, check_sampling, resolve
from .loop import StepLoop, spent_of
from .record import ParentLink, Recorder
from .session import KernelPool, SessionFactory
from .subcalls import SubcallService
from .tools import ToolBox, kernel_setup
from .tree import ChildRun, ChildRunner, children_dir
from .types import RunResult, Status

if TYPE_CHECKING:
    from .run import RLM

__all__ = ["RunSpec", "RunTree", "close_models"]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclasses.dataclass
class RunSpec:
    """One run of a tree: what differs between the root and a child."""

    question: str
    context: ContextInfo
    notebook: Path
    run_id: str
    depth: int
    budget: Budget
    parent: ParentLink | None
    hooks: dict[str, Any]
    approve: Any = None
    fork: Fork | None = None
    answer_schema: AnswerSchema | None = None


class RunTree:
    """What the runs of one tree share: the models, the concurrency cap and warm kernels."""

    def __init__(self, rlm: RLM) -> None:
        self.rlm = rlm
        self.limits = rlm.limits
        self.models: list[LLM] = []
        self.root: LLM | None = None
        self.sub: LLM | None = None
        self.child: LLM | None = None
        self.pool: KernelPool | None = None
        self.slots: asyncio.Semaphore | None = None
        # One tool box for the whole tree: children call the same tools under the same bound.
        self.tools = ToolBox(
            rlm.tools, timeout=rlm.limits.tool_timeout, max_concurrency=rlm.limits.max_concurrency
        )
        self._wrapped: dict[int, LLM] = {}

    def resolve_models(self) -> None:
        """Resolve the root, sub- and child models and check the sampling each is given."""
        rlm = self.rlm
        self.root = self._resolve(rlm.model)
        self.sub = self._resolve(rlm.sub_model)
        self.child = self._resolve(rlm.child_model) if rlm.child_model is not None else self.root
        check_sampling(self.root, rlm.sampling.of("root"), role="root")
        check_sampling(self.child, rlm.sampling.of("root"), role="child runs' root")
        check_sampling(self.sub, rlm.sampling.of("sub"), role="sub")

    def _resolve(self, spec: Any) -> LLM:
        llm = self.wrap(resolve(spec))
        self.models.append(llm)
        return llm

    def wrap(self, llm: LLM) -> LLM:
        """``llm`` behind the run's model-call cache, if it has one (once per model object)."""
        cache = self.rlm.cache
        if cache is None:
            return llm
        if id(llm) not in self._wrapped:
            # The feedback's spent line (seconds, dollars) differs from run to run.
            self._wrapped[id(llm)] = cache.wrap(llm, normalize=prompts.cache_view)
        return self._wrapped[id(llm)]

    async def aclose(self) -> None:
        """Close the tool box, stop the warm kernels and close the models' clients."""
        self.tools.close()
        if self.pool is not None:
            await self.pool.aclose()
        await close_models(self.models)

    async def execute(self, spec: RunSpec) -> RunResult:
        """Run ``spec`` to its end; the notebook records how it ended, whatever happens."""
        assert self.root is not None and self.sub is not None and self.child is not None
        if self.slots is None:
            self.slots = asyncio.Semaphore(self.limits.max_concurrency)
        # A root on a gateway gets no children on this host: its model's code must not run here.
        remote_root = getattr(self.rlm.session, "bridge", None) == "tcp"
        if self.pool is None and self.limits.max_depth > 1 and not remote_root:
            self.pool = KernelPool(self.rlm.warm_kernels, kernel_name=self.rlm.kernel_name)
            self.pool.fill()
        limits = self.limits
        if spec.depth > 1:
            limits = dataclasses.replace(
                limits, max_steps=limits.child_max_steps or limits.max_steps
            )
        root = self.root if spec.depth == 1 else self.child
        system = prompts.system_prompt(
            spec.context,
            limits,
            sub_model=self.sub.name,
            models=[root.name],
            depth=spec.depth,
            max_depth=limits.max_depth,
            spent=spent_of(spec.budget.root, steps=0) if spec.depth > 1 else None,
            template=self.rlm.system_prompt,
            tools=self.tools.describe(),
            answer_schema=spec.answer_schema.describe() if spec.answer_schema else "",
        )
        context_meta = spec.context.to_metadata(spec.notebook.parent)
        if self.rlm.embed_context and spec.depth == 1:
            context_meta["embedded"] = spec.context.embedded_text()
        recorder = Recorder(
            spec.notebook,
            {
                "run_id": spec.run_id,
                "status": "running",
                "question": spec.question,
                "models": {"root": root.name, "sub": self.sub.name},
                "limits": limits.to_dict(),
                "sampling": self.rlm.sampling.to_dict(),
                "system_prompt": system,
                "context": context_meta,
                "started": _now(),
                "parent": spec.parent.to_metadata() if spec.parent else None,
                "depth": spec.depth,
                "kernel": self._kernel_record(spec),
                **({"tools": self.tools.specs()} if self.tools else {}),
                **(
                    {"answer_schema": spec.answer_schema.to_metadata()}
                    if spec.answer_schema
                    else {}
                ),
            },
        )
        children = None
        if spec.depth < limits.max_depth and self.pool is not None:
            children = ChildRunner(
                notebook=spec.notebook,
                run_id=spec.run_id,
                depth=spec.depth,
                budget=spec.budget,
                recorder=recorder,
                launch=functools.partial(self._child, spec.hooks.get("on_child")),
            )
        service = SubcallService(
            sub=self.sub,
            budget=spec.budget,
            limits=limits,
            children=children,
            handoff_dir=children_dir(spec.notebook),
            on_subcall=spec.hooks.get("on_subcall"),
            on_late=recorder.update_subcalls,
            tools=self.tools if self.tools else None,
            wrap=self.wrap,
            sampling=self.rlm.sampling.of("sub"),
        )
        loop = StepLoop(
            root=root,
            question=spec.question,
            system=system,
            limits=limits,
            budget=spec.budget,
            recorder=recorder,
            service=service,
            hooks=spec.hooks,
            approve=spec.approve,
            answer_schema=spec.answer_schema,
            sampling=self.rlm.sampling.of("root"),
        )
        status: Status = "error"
        stop_reason: str | None = None
        error: str | None = None
        answer: str | None = None
        # A directory short enough for a Unix socket path, whatever TMPDIR is.
        work = socket_dir()
        factory = self._session(spec)
        # A kernel elsewhere (a gateway) dials a TCP listener and gets its files uploaded;
        # a local one reaches a Unix socket and reads the host's files where they are.
        remote = getattr(factory, "bridge", None) == "tcp"
        tool_setup = kernel_setup(self.tools.specs())
        try:
            async with BridgeServer(
                service,
                unix_path=None if remote else work / "bridge.sock",
                host=getattr(factory, "bridge_host", "127.0.0.1"),
                slots=self.slots,
            ) as bridge:
                if remote:
                    session_cm = factory.bootstrap(  # type: ignore[attr-defined]
                        address=bridge.address,
                        token=bridge.token,
                        context_path=str(spec.context.path),
                        context_kind=spec.context.kind,
                        **({"extra_setup": tool_setup} if tool_setup else {}),
                    )
                else:
                    setup = runtime.bootstrap_code(
                        runtime.__file__,
                        address=bridge.address,
                        token=bridge.token,
                        context_path=str(spec.context.path),
                        context_kind=spec.context.kind,
                        handoff_dir=str(children_dir(spec.notebook)),
                    )
                    if self.rlm.session is None or spec.depth > 1:  # our own kernels only
                        setup += _capture.setup_code(
                            limits.max_cell_output_bytes, limits.max_output_chars
                        )
                    session_cm = factory(setup_code=setup + tool_setup)
                async with session_cm as session:
                    first = (
                        await replay_prefix(spec.fork, loop, service, session) if spec.fork else 1
                    )
                    answer, stop_reason = await loop.run(session, first=first)
            status = "answered" if answer is not None else "no_answer"
        except RunStopped:
            status, stop_reason = "interrupted", "stopped"
        except (KeyboardInterrupt, asyncio.CancelledError):
            status, stop_reason, error = "interrupted", "interrupted", "the run was interrupted"
            raise
        except KernelStartError as e:
            error = str(e)
            # The kernel's start is bounded by what is left of the run's time: when that is what
            # ran out, the run ended on its time limit like any other step would have.
            if spec.budget.exhausted() == "timeout":
                status, stop_reason = "no_answer", "timeout"
                error = f"the run's time limit of {limits.timeout:g} s ran out: {error}"
        except RLMKernelError as e:
            error = str(e)
            stop_reason = getattr(e, "stop_reason", None)  # e.g. model_error: a refused model
        except Exception as e:  # the notebook records any failure before it propagates
            error = f"{type(e).__name__}: {e}"
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
            with contextlib.suppress(OSError):
                children_dir(spec.notebook).rmdir()  # made for hand-offs, and no child ran
            loop.record_totals()
            if self.tools:
                recorder.meta["tool_calls"] = service.tool_calls
            recorder.finish(status=status, stop_reason=stop_reason, answer=answer, error=error)
        return RunResult(
            answer=answer,
            status=status,
            notebook=str(recorder.path),
            run_id=spec.run_id,
            stop_reason=stop_reason,
            steps=loop.steps,
            subcalls=spec.budget.subcalls,
            tool_calls=service.tool_calls,
            value=loop.value if answer is not None else None,
            usage=dict(spec.budget.usage),
            cost_usd=spec.budget.cost_usd,
            duration_s=spec.budget.elapsed(),
            cache_hits=spec.budget.cache_hits,
            error=error,
            models={"root": root.name, "sub": self.sub.name},
            children=list(recorder.meta.get("children") or []),
        )

    def _kernel_record(self, spec: RunSpec) -> dict[str, Any]:
        """Where the run's kernel ran, for the notebook (never a token)."""
        factory = self._session(spec)
        record = getattr(factory, "record", None)
        if callable(record):
            return dict(record())
        return {"type": "local", "kernel_name": self.rlm.kernel_name}

    def _session(self, spec: RunSpec) -> SessionFactory:
        if spec.depth > 1 and self.pool is not None:
            return self.pool.session
        # A run's own kernel dies with the run (no history, a scratch folder), so it is stopped
        # at once rather than asked to shut down, which ipykernel can hang on.
        # The run's deadline holds while the kernel starts too.
        remaining = spec.budget.remaining_time()
        return self.rlm.session or functools.partial(
            KernelSession,
            kernel_name=self.rlm.kernel_name,
            shutdown_grace=0,
            startup_timeout=min(60.0, remaining) if remaining is not None else 60.0,
        )

    async def _child(self, on_child: Hook | None, child: ChildRun) -> RunResult:
        common = {"notebook": str(child.notebook), "depth": child.depth, "question": child.question}
        await run_hook(on_child, event="start", result=None, **common)

        async def on_step(**step: Any) -> None:
            await run_hook(on_child, event="step", result=None, **common, **step)

        async def on_step_end(**step: Any) -> None:
            await run_hook(on_child, event="step_end", result=None, **common, **step)

        spec = RunSpec(
            question=child.question,
            context=child.context,
            notebook=child.notebook,
            run_id=uuid.uuid4().hex[:12],
            depth=child.depth,
            budget=child.budget,
            parent=child.parent,
            # A display follows a child's steps through the one hook it gave for children.
            hooks={
                "on_child": on_child,
                "on_step": on_step if on_child is not None else None,
                "on_step_end": on_step_end if on_child is not None else None,
            },
        )
        result = await self.execute(spec)
        await run_hook(on_child, event="end", result=result, **common)
        return result


async def close_models(models: Iterable[LLM]) -> None:
    """Close the HTTP clients of models that have an ``aclose`` (an optional capability)."""
    seen: set[int] = set()
    for llm in models:
        aclose = getattr(llm, "aclose", None)
        if aclose is not None and id(llm) not in seen:
            seen.add(id(llm))
            await run_hook(aclose)
