"""A started :class:`rlm_kernel.dspy.KernelInterpreter`: its loop thread, bridge, kernel, notebook.

DSPy's calls are synchronous and the kernel and bridge asynchronous, so a session runs them on a
private event loop in a thread of its own; every wait for that loop has a deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime as dt
import functools
import json
import keyword
import shutil
import tempfile
import threading
import uuid
import warnings
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import dspy
from dspy.primitives.code_interpreter import CodeExecutionError, CodeInterpreterError, FinalOutput

from . import runtime
from ._dspy_host import TAP, Inputs, ToolHost
from .bridge import BridgeServer
from .context import prepare
from .errors import RLMKernelError
from .kernel import ExecResult, KernelSession
from .outputs import OutputCollector, render_text
from .record import Recorder
from .run import RUNS_DIR, check_notebook_path

T = TypeVar("T")
SETUP_TAG = "rlm-dspy-setup"
_SYNTAX_ERRORS = frozenset({"SyntaxError", "IndentationError", "TabError"})
_CLOSE_TIMEOUT = 30.0
_SLACK = 30.0  # beyond the kernel's own limits, before a wait for the kernel counts as hung


@functools.cache
def _helpers_source() -> str:
    return Path(__file__).with_name("_dspy_kernel.py").read_text(encoding="utf-8")


class _Loop:
    """A private asyncio loop on a daemon thread, for coroutines called from DSPy's sync code."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None, what: str) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise CodeInterpreterError(f"the kernel did not {what} within {timeout:g} s") from None
        except BaseException:
            future.cancel()  # e.g. Ctrl-C in DSPy's thread: stop the cell in the kernel too
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(_CLOSE_TIMEOUT)
        if not self.thread.is_alive():
            self.loop.close()


def _default_path() -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(RUNS_DIR) / f"dspy-{stamp}-{uuid.uuid4().hex[:6]}.ipynb"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _fields(output_fields: list[dict[str, Any]] | None) -> list[dict[str, str]] | None:
    if output_fields is None:
        return None
    fields = []
    for f in output_fields:
        name = f.get("name") if isinstance(f, Mapping) else None
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise CodeInterpreterError(f"output field names must be Python identifiers: {f!r}")
        entry = {"name": name}
        if isinstance(f.get("type"), str):
            entry["type"] = f["type"]
        fields.append(entry)
    return fields


def _is_shim(code: str) -> bool:
    try:
        from dspy.primitives.facade import SHIM_SETUP
    except ImportError:
        return False
    return code == SHIM_SETUP


class Session:
    """One started interpreter: loop thread, bridge, kernel, notebook and what DSPy gave it."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.run_id = uuid.uuid4().hex[:12]
        path = owner.notebook if owner.notebook is not None else _default_path()
        self.inputs = Inputs()
        self.steps = 0
        self.kernel_tools: tuple[str, ...] | None = None
        self.kernel_fields: Any = False  # not yet sent; None is a valid value
        self.broken: str | None = None
        self.interrupted = False
        self.answer: str | None = None
        try:
            self.path = check_notebook_path(path)
            info = prepare({}, self.path.with_suffix(""))
            self.recorder = Recorder(
                self.path, self._first_meta(info.to_metadata(self.path.parent))
            )
        except RLMKernelError as e:  # a notebook path that cannot be written
            raise CodeInterpreterError(str(e)) from None
        self.work = Path(tempfile.mkdtemp(prefix="rlm-d-"))
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=owner.max_concurrency, thread_name_prefix="rlm-dspy-tool"
        )
        self.host = ToolHost(owner.tools, self.executor)
        self.loop = _Loop(f"rlm-dspy-{self.run_id}")
        self.bridge = BridgeServer(
            self.host, unix_path=self.work / "bridge.sock", max_concurrency=owner.max_concurrency
        )
        self.kernel: KernelSession | None = None
        try:
            wait = owner.startup_timeout * 2 + _SLACK
            self.loop.call(self._astart(info.path), wait, "start")
        except BaseException as e:
            self.broken = f"the kernel did not start: {e}"
            self.close()
            if isinstance(e, RLMKernelError):
                raise CodeInterpreterError(f"the kernel did not start: {e}") from None
            raise

    def _first_meta(self, context: dict[str, Any]) -> dict[str, Any]:
        owner = self.owner
        return {
            "run_id": self.run_id,
            "status": "running",
            "question": owner.question or "",
            "models": {"root": None, "sub": None},
            "limits": {
                "cell_timeout": owner.cell_timeout,
                "max_cell_output_bytes": owner.max_cell_output_bytes,
                "max_concurrency": owner.max_concurrency,
            },
            "context": context,
            "cost_usd": None,
            "started": _now(),
            "versions": {"dspy": getattr(dspy, "__version__", None)},
            "dspy": {"interpreter": "rlm_kernel.dspy.KernelInterpreter"},
        }

    async def _astart(self, context_path: Path) -> None:
        await self.bridge.start()
        setup = runtime.bootstrap_code(
            runtime.__file__,
            address=self.bridge.address,
            token=self.bridge.token,
            context_path=str(context_path),
            context_kind="json",
        )
        # The kernel dies with the interpreter (a scratch folder, no history): stopped at once.
        self.kernel = KernelSession(
            kernel_name=self.owner.kernel_name,
            setup_code=setup,
            startup_timeout=self.owner.startup_timeout,
            shutdown_grace=0,
        )
        await self.kernel.start()

    # -- one execute -----------------------------------------------------------------------

    def execute(
        self,
        code: str,
        variables: dict[str, Any],
        tools: tuple[str, ...],
        output_fields: list[dict[str, Any]] | None,
    ) -> Any:
        if self.broken is not None:
            raise CodeInterpreterError(f"this interpreter's session is over: {self.broken}")
        self.host.use_context(contextvars.copy_context())
        self.steps = step = self.steps + 1
        action = TAP.take(code)
        self._add_step(step, code, action)
        block = 0
        if self.kernel_tools is None:
            block += 1
            self._setup_cell(step, block, _helpers_source())
        lines = []
        fields = _fields(output_fields)
        if tools != self.kernel_tools:
            lines.append(
                f"_rlm_dspy.tools({list(tools)!r}, previous={list(self.kernel_tools or ())!r})"
            )
            self.kernel_tools = tools
        if fields != self.kernel_fields:
            lines.append(f"_rlm_dspy.submit({fields!r})")
            self.kernel_fields = fields
        if variables:
            keys, new = self.inputs.add(variables)
            if new:
                self._load_inputs()
            lines.append(f"_rlm_dspy.inputs({keys!r})")
        if lines:
            block += 1
            self._setup_cell(step, block, "\n".join(lines))
        self.host.begin_cell()
        result = self._run(code, silent=False)
        return self._finish_cell(step, block + 1, code, result)

    def _add_step(self, step: int, code: str, action: Any) -> None:
        if action is not None:
            markdown, raw = action.reasoning, f"{action.reasoning}\n\n```python\n{code}\n```"
            if action.model and not self.recorder.meta["models"].get("root"):
                self.recorder.meta["models"]["root"] = action.model
        elif _is_shim(code):
            markdown = raw = (
                "*DSPy installs its sandbox `dspy` module: predictors built in the code run on the "
                "host. No model wrote this code.*"
            )
        else:
            markdown = raw = "*This code came from DSPy, not from a model step seen here.*"
        self.recorder.add_step(
            step=step,
            markdown=markdown,
            raw=raw,
            usage={},
            latency_s=round(action.latency_s, 4) if action is not None else 0.0,
            extra={"model": action.model if action is not None else None, "source": "dspy"},
        )

    def _setup_cell(self, step: int, block: int, source: str) -> None:
        result = self._run(source, silent=False)
        self.recorder.add_code(
            step=step,
            block=block,
            source=source,
            outputs=result.outputs,
            execution_count=result.execution_count,
            exec=_exec(result, render_text(result.outputs)),
            subcalls=[],
            tags=(SETUP_TAG,),
        )
        if result.status != "ok":
            self._save()
            self.broken = f"its setup cell failed ({result.status}): {render_text(result.outputs)}"
            raise CodeInterpreterError(
                f"the interpreter's setup failed in the kernel: {self.broken}"
            )

    def _load_inputs(self) -> None:
        try:
            info = prepare(self.inputs.values, self.path.with_suffix(""))
        except RLMKernelError as e:
            raise CodeInterpreterError(f"cannot pass DSPy's variables to the kernel: {e}") from None
        self.recorder.meta["context"] = info.to_metadata(self.path.parent)
        if not self.owner.question:
            self.recorder.meta["question"] = self._describe()
        # Live only: replay finds the same values in `context`, loaded by its setup cell.
        reader = f"__import__({runtime.MODULE_NAME!r}).load_context"
        load = f"_rlm_dspy.load({reader}({str(info.path)!r}, 'json'))"
        result = self._run(load, silent=True)
        if result.status != "ok":
            self.broken = f"loading the inputs failed: {render_text(result.outputs)}"
            raise CodeInterpreterError(self.broken)

    def _describe(self) -> str:
        names = [n for n in self.inputs.names if not n.startswith("_")]
        fields = [f["name"] for f in self.kernel_fields or [{"name": "output"}]]
        return f"dspy: {', '.join(names) or '(no inputs)'} -> {', '.join(fields)}"

    def _run(self, code: str, *, silent: bool) -> ExecResult:
        assert self.kernel is not None
        owner = self.owner
        timeout = owner.cell_timeout
        collector = OutputCollector(owner.max_cell_output_bytes)
        coro = self.kernel.execute(
            code, timeout=timeout, silent=silent, store_history=not silent, collector=collector
        )
        wait = None if timeout is None else timeout + owner.startup_timeout + _SLACK
        try:
            return self.loop.call(coro, wait, "finish a cell")
        except CodeInterpreterError as e:
            self.broken = str(e)
            raise
        except RLMKernelError as e:  # the kernel died and could not be started again
            self.broken = str(e)
            raise CodeInterpreterError(f"the kernel failed: {e}") from None
        except (KeyboardInterrupt, asyncio.CancelledError):
            self.interrupted = True
            raise

    def _finish_cell(self, step: int, block: int, code: str, result: ExecResult) -> Any:
        text = render_text(result.outputs)
        submitted = self.host.submitted
        if result.status == "timeout" and not result.restarted:
            text += f"\n[interrupted after {result.duration_s:.1f} s (time limit); variables kept]"
        elif result.status in ("timeout", "kernel_died"):
            ename, evalue = result.error or ("DeadKernelError", "")
            self.broken = f"{ename}: {evalue}"
        self.recorder.add_code(
            step=step,
            block=block,
            source=code,
            outputs=result.outputs,
            execution_count=result.execution_count,
            exec=_exec(result, text),
            subcalls=self.host.take_records(),
            tags=("rlm-final",) if submitted is not None else (),
        )
        if submitted is not None:
            self.answer = submitted
        self._save()
        if submitted is not None:
            return FinalOutput(json.loads(submitted))
        if self.broken is not None:
            raise CodeInterpreterError(f"the kernel's session is over: {self.broken}")
        if result.status == "ok":
            return text or None
        ename = (result.error or ("Error", ""))[0]
        if ename in _SYNTAX_ERRORS:
            raise SyntaxError(text.strip())
        raise CodeExecutionError(text.strip())

    def _update_meta(self) -> None:
        meta = self.recorder.meta
        meta["steps"] = self.steps
        meta["subcalls"] = self.host.calls
        if self.host.sub_model and not meta["models"].get("sub"):
            meta["models"]["sub"] = self.host.sub_model

    def _save(self) -> None:
        self._update_meta()
        self.recorder.save()

    # -- the end ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the kernel, the bridge, the loop; finish the notebook. Never raises."""
        try:
            self.loop.call(self._aclose(), _CLOSE_TIMEOUT, "stop")
        except BaseException as e:
            warnings.warn(f"rlm-kernel: stopping the DSPy interpreter's kernel: {e}", stacklevel=3)
        self.loop.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.work, ignore_errors=True)
        if self.interrupted:
            status, stop = "interrupted", "interrupted"
        elif self.broken is not None:
            status, stop = "error", "error"
        elif self.answer is not None:
            status, stop = "answered", "final"
        else:
            status, stop = "no_answer", "shutdown"
        try:
            self._update_meta()
            self.recorder.finish(
                status=status, stop_reason=stop, answer=self.answer, error=self.broken
            )
        except (OSError, RLMKernelError) as e:
            warnings.warn(f"rlm-kernel: cannot finish {self.path}: {e}", stacklevel=3)

    async def _aclose(self) -> None:
        try:
            if self.kernel is not None:
                await self.kernel.shutdown()
        finally:
            await self.bridge.aclose()


def _exec(result: ExecResult, shown: str) -> dict[str, Any]:
    return {
        "status": result.status,
        "duration_s": round(result.duration_s, 4),
        "output_chars": len(render_text(result.outputs)),
        "shown": shown,
    }
