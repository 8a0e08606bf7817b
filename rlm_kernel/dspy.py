"""DSPy's ``CodeInterpreter`` on a real Jupyter kernel: every ``dspy.RLM`` run becomes a notebook.

Plug it in the way DSPy documents for interpreters::

    import dspy
    from rlm_kernel.dspy import KernelInterpreter

    rlm = dspy.RLM(
        "context, query -> answer",
        interpreter_factory=KernelInterpreter.factory(notebook="runs/x.ipynb"),
    )
    # or for every code-running module: dspy.configure(interpreter_factory=KernelInterpreter)

Each interpreter owns one kernel (``rlm_kernel.kernel.KernelSession``) and one run notebook
(``rlm_kernel.notebook.Recorder``): per ``execute`` a step with the model's reasoning as markdown,
the interpreter's setup cell (DSPy's tools, ``SUBMIT``, the inputs) and the code with its real
outputs. DSPy's tools run on the host, reached from the kernel through the rlm-kernel bridge, and
every call is recorded on its cell, so ``rlm-kernel replay`` runs the notebook again without a key.

DSPy calls are synchronous; the kernel and the bridge are asynchronous. Each interpreter runs them
on a private event loop in a thread of its own, and every wait for it has a deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime as dt
import functools
import inspect
import json
import keyword
import shutil
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

try:
    import dspy
    from dspy.primitives.code_interpreter import (
        CodeExecutionError,
        CodeInterpreterError,
        FinalOutput,
    )
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "rlm_kernel.dspy needs DSPy 3.4 or later: pip install 'rlm-kernel[dspy]'"
    ) from e

from . import runtime
from ._dspy_host import TAP, Inputs, ToolHost
from .bridge import BridgeServer
from .context import prepare
from .errors import RLMKernelError
from .kernel import ExecResult, KernelSession
from .notebook import Recorder
from .outputs import OutputCollector, render_text
from .run import RUNS_DIR, check_notebook_path

__all__ = ["KernelInterpreter", "KernelInterpreterFactory"]

T = TypeVar("T")
SETUP_TAG = "rlm-dspy-setup"
_SYNTAX_ERRORS = frozenset({"SyntaxError", "IndentationError", "TabError"})
_SUBMITTED = "_rlm_dspy_Submitted"  # the kernel's SUBMIT signal (see _dspy_kernel.py)
_RESERVED = frozenset({"SUBMIT", "get_ipython", "__builtins__"})
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


class KernelInterpreter:
    """A DSPy ``CodeInterpreter`` whose code runs in a Jupyter kernel, recorded as a notebook.

    Follows DSPy's contract: ``tools`` is a mutable dict of host functions callable from the code
    as globals (keyword or positional arguments, JSON in and out); ``output_fields`` types
    ``SUBMIT``; state persists across :meth:`execute` calls until :meth:`shutdown`.

    Args:
        tools: host functions by name (DSPy's RLM adds ``llm_query`` and its own).
        output_fields: ``[{"name": ..., "type": ...}]`` for ``SUBMIT``'s signature.
        notebook: the run notebook to write (default: ``rlm-runs/dspy-<time>-<id>.ipynb``).
        question: what the summary calls the run (default: the program's inputs and outputs).
        kernel_name: the Jupyter kernelspec to start.
        cell_timeout: seconds one execution may run before the kernel is interrupted.
        startup_timeout: seconds the kernel may take to start.
        max_cell_output_bytes: output of one cell kept in the notebook.
        max_concurrency: tool calls run at once on the host.
    """

    execution_instructions = (
        "Code runs in a Jupyter kernel (IPython on CPython) in a separate process. Variables, "
        "imports and functions persist across executions. The tools and SUBMIT are global "
        "functions; tool arguments and results must be JSON values. Each execution shows what a "
        "notebook cell shows: printed text, the value of the last line, errors with their "
        "traceback. A long-running cell is interrupted after its time limit; its variables stay."
    )

    def __init__(
        self,
        tools: Mapping[str, Callable[..., Any]] | None = None,
        output_fields: list[dict[str, Any]] | None = None,
        *,
        notebook: str | Path | None = None,
        question: str | None = None,
        kernel_name: str = "python3",
        cell_timeout: float | None = 300.0,
        startup_timeout: float = 60.0,
        max_cell_output_bytes: int = 1_000_000,
        max_concurrency: int = 16,
    ) -> None:
        for name, value in (("cell_timeout", cell_timeout), ("startup_timeout", startup_timeout)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        self._tools: dict[str, Callable[..., Any]] = dict(tools or {})
        self.output_fields = output_fields
        self.notebook = Path(notebook) if notebook is not None else None
        self.question = question
        self.kernel_name = kernel_name
        self.cell_timeout = cell_timeout
        self.startup_timeout = startup_timeout
        self.max_cell_output_bytes = max_cell_output_bytes
        self.max_concurrency = max_concurrency
        self._session: _Session | None = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def tools(self) -> dict[str, Callable[..., Any]]:
        """Host functions the code can call by name; DSPy updates this dict in place."""
        return self._tools

    @classmethod
    def factory(cls, **options: Any) -> KernelInterpreterFactory:
        """A zero-argument callable making a fresh interpreter, for ``interpreter_factory=``.

        Takes the options of the class. Each call numbers its notebook after the first
        (``x.ipynb``, ``x-2.ipynb``, ...), so runs of one program do not overwrite each other.
        """
        return KernelInterpreterFactory(cls, **options)

    def start(self) -> None:
        """Start the kernel and the run notebook; calling it again does nothing.

        Raises:
            CodeInterpreterError: the interpreter was shut down, or its kernel could not start.
        """
        if self._closed:
            raise CodeInterpreterError(
                "this KernelInterpreter has been shut down; create a new one for a new session"
            )
        if self._session is None:
            self._session = _Session(self)
            TAP.count()
        TAP.attach()

    def execute(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        """Run ``code`` in the kernel after injecting ``variables``; record it as a step.

        Returns:
            ``FinalOutput`` when the code called ``SUBMIT``; else the text a notebook shows for
            the cell (printed output, the last value), or ``None`` when there is none.

        Raises:
            SyntaxError: the code does not parse.
            CodeExecutionError: the code raised (the message holds its output and traceback),
                or ran past ``cell_timeout`` and was interrupted (its variables stay).
            CodeInterpreterError: the kernel died or hung (the session is over), or the setup
                is wrong (a tool or variable name, a value that is not JSON).
        """
        if not self._lock.acquire(blocking=False):
            raise CodeInterpreterError(
                "this KernelInterpreter is already running code; one interpreter serves one "
                "DSPy run at a time"
            )
        try:
            if not isinstance(code, str):
                raise CodeInterpreterError(f"code must be a str, not {type(code).__name__}")
            tools = _check_names(self._tools, "tool")
            given = dict(variables or {})
            clash = sorted(set(given) & set(tools))
            if clash:
                raise CodeInterpreterError(f"variables cannot replace tools: {', '.join(clash)}")
            _check_names(given, "variable")
            self.start()
            assert self._session is not None
            return self._session.execute(code, given, tools, self.output_fields)
        finally:
            self._lock.release()

    def shutdown(self) -> None:
        """Stop the kernel and finish the notebook; the interpreter cannot be used again."""
        if self._closed:
            return
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            TAP.detach()
            session.close()

    def __call__(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        return self.execute(code, variables)

    def __enter__(self) -> KernelInterpreter:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    @property
    def notebook_path(self) -> Path | None:
        """The notebook being written, once started."""
        return self._session.recorder.path if self._session is not None else self.notebook


class KernelInterpreterFactory:
    """Makes a fresh :class:`KernelInterpreter` per call (DSPy may call it concurrently).

    Made by :meth:`KernelInterpreter.factory`; ``execution_instructions`` tells DSPy's RLM what
    runtime the code gets.
    """

    def __init__(self, cls: type[KernelInterpreter] = KernelInterpreter, **options: Any) -> None:
        try:
            inspect.signature(cls).bind(**options)
        except TypeError as e:
            raise TypeError(f"KernelInterpreter.factory: {e}") from None
        self.cls = cls
        self.options = options
        self.execution_instructions = cls.execution_instructions
        self._made = 0
        self._lock = threading.Lock()

    def __call__(self) -> KernelInterpreter:
        options = dict(self.options)
        with self._lock:
            self._made += 1
            n = self._made
        notebook = options.get("notebook")
        if notebook is not None and n > 1:
            path = Path(notebook)
            options["notebook"] = path.with_name(f"{path.stem}-{n}{path.suffix}")
        return self.cls(**options)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"KernelInterpreter.factory({shown})"


def _check_names(names: Mapping[str, Any], what: str) -> tuple[str, ...]:
    bad = [
        n
        for n in names
        if not isinstance(n, str)
        or not n.isidentifier()
        or keyword.iskeyword(n)
        or n in _RESERVED
        or n.startswith("_rlm")
    ]
    if bad:
        raise CodeInterpreterError(
            f"{what} names must be Python identifiers other than SUBMIT and not starting with "
            f"_rlm; invalid: {', '.join(map(repr, bad))}"
        )
    return tuple(names)


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


class _Session:
    """One started interpreter: loop thread, bridge, kernel, notebook and what DSPy gave it."""

    def __init__(self, owner: KernelInterpreter) -> None:
        self.owner = owner
        self.run_id = uuid.uuid4().hex[:12]
        path = owner.notebook if owner.notebook is not None else _default_path()
        try:
            self.path = check_notebook_path(path)
        except RLMKernelError as e:
            raise CodeInterpreterError(str(e)) from None
        self.inputs = Inputs()
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=owner.max_concurrency, thread_name_prefix="rlm-dspy-tool"
        )
        self.host = ToolHost(owner.tools, self.executor)
        self.steps = 0
        self.kernel_tools: tuple[str, ...] | None = None
        self.kernel_fields: Any = False  # not yet sent; None is a valid value
        self.broken: str | None = None
        self.answer: str | None = None
        self.work = Path(tempfile.mkdtemp(prefix="rlm-d-"))
        info = prepare({}, self.path.with_suffix(""))
        self.recorder = Recorder(
            self.path,
            {
                "run_id": self.run_id,
                "status": "running",
                "question": owner.question or "",
                "models": {"root": None, "sub": None},
                "limits": {
                    "cell_timeout": owner.cell_timeout,
                    "max_cell_output_bytes": owner.max_cell_output_bytes,
                    "max_concurrency": owner.max_concurrency,
                },
                "context": info.to_metadata(self.path.parent),
                "cost_usd": None,
                "started": _now(),
                "versions": {"dspy": getattr(dspy, "__version__", None)},
                "dspy": {"interpreter": "rlm_kernel.dspy.KernelInterpreter"},
            },
        )
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

    def _save(self) -> None:
        meta = self.recorder.meta
        meta["steps"] = self.steps
        meta["subcalls"] = self.host.calls
        if self.host.sub_model and not meta["models"].get("sub"):
            meta["models"]["sub"] = self.host.sub_model
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
        if self.broken is not None:
            status, stop = "error", "error"
        elif self.answer is not None:
            status, stop = "answered", "final"
        else:
            status, stop = "no_answer", "shutdown"
        try:
            self._save_meta_only()
            self.recorder.finish(
                status=status, stop_reason=stop, answer=self.answer, error=self.broken
            )
        except (OSError, RLMKernelError) as e:
            warnings.warn(f"rlm-kernel: cannot finish {self.path}: {e}", stacklevel=3)

    def _save_meta_only(self) -> None:
        meta = self.recorder.meta
        meta["steps"] = self.steps
        meta["subcalls"] = self.host.calls

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
