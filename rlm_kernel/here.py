"""Run the model's code in the IPython kernel this process is: ``%%rlm --here``.

The RLM loop runs on a worker thread with its own event loop; each code block is handed to the
kernel's main thread (its event loop is free while the ``%%rlm`` cell awaits the run), executed
there with ``shell.run_cell`` in the user's namespace, and its outputs are collected as notebook
outputs. So the variables the model makes stay in the user's kernel, while sub-calls still travel
over the bridge to the worker thread, which holds the models.

The run binds ``context``, ``answer``, ``llm_query`` & co. in the user's namespace while it goes
on (:data:`~rlm_kernel.runtime.INSTALLED_NAMES`). When it ends, the values the user had under
those names are put back; a name the user did not have keeps the run's value (``context`` and
``answer`` to inspect), and the functions left behind raise ``RunEnded`` ("this run has ended")
instead of reaching for a host that is gone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from IPython.utils.capture import capture_output

from .errors import KernelStartError
from .kernel import ExecResult
from .outputs import OutputCollector
from .runtime import INSTALLED_NAMES

T = TypeVar("T")

# The kernel's main thread is free while the %%rlm cell awaits the run, so putting the user's
# names back takes moments; the deadline only guards against a kernel that is wedged.
END_DEADLINE_S = 30.0
ENDED_NOTE = (
    " (a %%rlm --here run: its REPL functions work only while it runs; start a new run to ask "
    "again)"
)


def in_worker_thread(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Run ``coro`` to completion on a new thread with its own event loop."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def main() -> None:
        try:
            future.set_result(asyncio.run(coro))
        except BaseException as e:  # handed to whoever waits on the future
            future.set_exception(e)

    threading.Thread(target=main, name="rlm-here", daemon=True).start()
    return future


class HereSession:
    """A :class:`~rlm_kernel.session.Session` that runs code in the current IPython kernel.

    Args:
        setup_code: run once, silently, when the session starts (it installs ``context``,
            ``llm_query`` & co. in the user's namespace).
        shell: the kernel's IPython shell.
        loop: the kernel's event loop (the main thread's), which must stay free while the
            run goes on: await the run rather than block on it.

    Time limits raise ``KeyboardInterrupt`` in the running code, which stops Python code but not
    a blocking call in C. The session leaves every variable in place when it ends.
    """

    def __init__(self, *, setup_code: str, shell: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.setup_code = setup_code
        self.shell = shell
        self.loop = loop
        self._running = threading.Event()
        self._main_thread = 0
        self._saved: dict[str, Any] = {}

    async def __aenter__(self) -> HereSession:
        await self._on_main(self._save_names)
        result = await self._on_main(self._run_cell, self.setup_code, OutputCollector(), True)
        if result.status != "ok":
            await self._on_main(self._restore_names)
            ename, evalue = result.error or ("Error", "")
            raise KernelStartError(f"setting up the REPL in this kernel failed: {ename}: {evalue}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.wait_for(self._on_main(self._restore_names), END_DEADLINE_S)

    def _save_names(self) -> None:
        ns = self.shell.user_ns
        self._saved = {name: ns[name] for name in INSTALLED_NAMES if name in ns}

    def _restore_names(self) -> None:
        """End the run's functions, then put back the user's values of the names it bound."""
        ns = self.shell.user_ns
        host = ns.get("_rlm_host")
        if host is not None and host is not self._saved.get("_rlm_host"):
            host.end(ENDED_NOTE)
        for event, hook in ns.get("_rlm_hooks", []):
            with contextlib.suppress(ValueError):
                self.shell.events.unregister(event, hook)
        if "_rlm_hooks" not in self._saved:
            ns.pop("_rlm_hooks", None)
        ns.update(self._saved)
        # A replay installed before the run (%rlm_replay) gets its cell hooks back.
        for event, hook in self._saved.get("_rlm_hooks", []):
            self.shell.events.register(event, hook)

    async def execute(
        self,
        code: str,
        *,
        timeout: float | None = None,
        collector: OutputCollector | None = None,
        max_output_bytes: int = 1_000_000,
        cell_id: str | None = None,
        user_expressions: dict[str, str] | None = None,
    ) -> ExecResult:
        """Run ``code`` in the user's namespace and collect its outputs as notebook outputs."""
        collector = collector or OutputCollector(max_output_bytes)
        call = self._submit(self._run_cell, code, collector, False, cell_id, user_expressions)
        pending = asyncio.wrap_future(call)
        done, _ = await asyncio.wait({pending}, timeout=timeout)
        if done:
            return pending.result()
        if self._running.is_set():
            # Like the kernel's interrupt: KeyboardInterrupt in the running code. ipykernel
            # ignores SIGINT in its own process, so the exception is raised in the thread.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._main_thread), ctypes.py_object(KeyboardInterrupt)
            )
        result = await pending
        result.status = "timeout"
        return result

    def _submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args))
            except BaseException as e:
                future.set_exception(e)

        self.loop.call_soon_threadsafe(call)
        return future

    async def _on_main(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._submit(fn, *args))

    def _run_cell(
        self,
        code: str,
        collector: OutputCollector,
        silent: bool,
        cell_id: str | None = None,
        user_expressions: dict[str, str] | None = None,
    ) -> ExecResult:
        started = time.monotonic()
        self._main_thread = threading.get_ident()
        self._running.set()
        try:
            with capture_output(display=True) as captured:
                result = self.shell.run_cell(
                    code, store_history=False, silent=silent, cell_id=cell_id
                )
        finally:
            self._running.clear()
        for name, text in (("stdout", captured.stdout), ("stderr", captured.stderr)):
            if text:
                collector.add(_msg("stream", name=name, text=text))
        for shown in captured.outputs:
            collector.add(_msg("display_data", data=shown.data, metadata=shown.metadata or {}))
        if result.result is not None:
            data, metadata = self.shell.display_formatter.format(result.result)
            # ipykernel's display hook may already have been captured as a display above.
            if not any(shown.data == data for shown in captured.outputs):
                collector.add(
                    _msg("execute_result", data=data, metadata=metadata, execution_count=None)
                )
        error = result.error_in_exec or result.error_before_exec
        if error is not None:
            traceback = self.shell.InteractiveTB.structured_traceback(
                type(error), error, error.__traceback__
            )
            collector.add(
                _msg("error", ename=type(error).__name__, evalue=str(error), traceback=traceback)
            )
        expressions = self.shell.user_expressions(user_expressions) if user_expressions else {}
        return ExecResult(
            user_expressions=expressions,
            status="ok" if error is None else "error",
            outputs=collector.outputs,
            execution_count=None,
            duration_s=time.monotonic() - started,
            output_bytes=collector.total_bytes,
            error=None if error is None else (type(error).__name__, str(error)),
        )


def _msg(msg_type: str, **content: Any) -> dict[str, Any]:
    """An iopub-shaped message, so captured output goes through the same collector."""
    return {"header": {"msg_type": msg_type}, "content": content}
