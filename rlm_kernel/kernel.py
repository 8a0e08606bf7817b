"""A Jupyter kernel session: start, run cells with timeouts, restart, and leave nothing behind.

``KernelSession`` owns one kernel process at a time, started by ``jupyter_client`` over the
``ipc`` transport inside a private runtime directory, with an environment built from an
allowlist so that API keys and other secrets never reach code running in the kernel. It knows
nothing about models or notebooks: it runs code and returns nbformat outputs.

Usage::

    async with KernelSession(setup_code="import math") as ks:
        result = await ks.execute("print(math.pi)", timeout=30)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import pathlib
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jupyter_client import AsyncKernelManager
from jupyter_client.asynchronous import AsyncKernelClient

from . import kernel_messages
from .errors import KernelError, KernelStartError
from .exec_result import ExecResult, execution_result
from .kernel_process import (
    ENV_ALLOWLIST,
    Leftovers,
    describe_exit,
    has_children,
    has_exited,
    kernel_env,
    kill_group,
    protect_host_memory,
    remove_leftovers,
    track,
    untrack,
)
from .outputs import OutputCollector, strip_ansi

# ExecResult, execution_result, ENV_ALLOWLIST and kernel_env live in exec_result and
# kernel_process; they stay importable from here, where callers have always found them.
__all__ = ["ENV_ALLOWLIST", "ExecResult", "KernelSession", "execution_result", "kernel_env"]

# How long a kernel may take to exit after a shutdown request before it is killed. A clean exit
# takes about 0.1 s, but ipykernel's control thread often deadlocks against the kernel's own
# teardown (it flushes stdout into the already stopped IOPub thread) and the process then hangs
# for 10 s or more, so the grace is short.
_SHUTDOWN_GRACE = 0.5
_EXIT_POLL = 0.005
# Unix socket paths are limited to about 107 bytes; ours are "<runtime_dir>/k-<n>".
_MAX_RUNTIME_DIR_LEN = 90


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class KernelSession:
    """One Jupyter kernel, its private runtime directory and everything it started.

    Args:
        kernel_name: the kernelspec to start.
        cwd: the kernel's working directory (default: ``work`` inside ``runtime_dir``).
        env: variables set in the kernel on top of the allowlisted host environment.
        env_allowlist: more host variable names to pass through.
        setup_code: code run silently after every start and restart (e.g. loading the context).
        startup_timeout: seconds a start (or restart) may take in all: launching the process,
            the kernel becoming ready and ``setup_code``. A caller with a deadline of its own
            passes what is left of it.
        interrupt_grace: seconds to wait for a cell to stop after a timeout interrupt before
            the kernel is restarted.
        shutdown_grace: seconds a kernel may take to exit after a shutdown request before its
            process group is killed; 0 kills at once (for kernels whose state is disposable).

    Attributes:
        runtime_dir: private (0700) directory holding the connection file and sockets; callers
            may put files there too. It is removed on shutdown.
    """

    def __init__(
        self,
        *,
        kernel_name: str = "python3",
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        env_allowlist: Iterable[str] = (),
        setup_code: str | None = None,
        startup_timeout: float = 60.0,
        interrupt_grace: float = 5.0,
        shutdown_grace: float = _SHUTDOWN_GRACE,
    ) -> None:
        self.kernel_name = kernel_name
        self.setup_code = setup_code
        self.startup_timeout = startup_timeout
        self.interrupt_grace = interrupt_grace
        self.shutdown_grace = shutdown_grace
        self._env_names = tuple(env_allowlist)
        self._extra_env = dict(env or {})
        self._state = _State.NEW
        self._km: AsyncKernelManager | None = None
        self._kc: AsyncKernelClient | None = None
        self._busy = False
        self._lock: asyncio.Lock | None = None

        base = tempfile.gettempdir()
        if len(base) > _MAX_RUNTIME_DIR_LEN - 12 and os.path.isdir("/tmp"):
            base = "/tmp"  # a long TMPDIR (macOS) would overflow the Unix socket path limit
        self.runtime_dir = pathlib.Path(tempfile.mkdtemp(prefix="rlm-", dir=base))
        self._leftovers = Leftovers(self.runtime_dir)
        track(self._leftovers)
        self.cwd = pathlib.Path(cwd) if cwd is not None else self.runtime_dir / "work"

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The kernel's process ID, or ``None`` when no kernel runs."""
        provisioner = self._km.provisioner if self._km is not None else None
        return getattr(provisioner, "pid", None) if provisioner is not None else None

    @property
    def connection_info(self) -> dict[str, Any]:
        """The running kernel's connection info (transport, socket paths; without the key)."""
        km = self._require_running()
        info = dict(km.get_connection_info())
        info.pop("key", None)
        return info

    async def start(self) -> None:
        """Start the kernel and run ``setup_code``.

        Raises:
            KernelStartError: the kernel did not start or ``setup_code`` failed; nothing is left
                running and the session is closed.
            KernelError: the session was already started or is closed.
        """
        if self._state is _State.CLOSED:
            raise KernelError("this kernel session is closed")
        if self._state is _State.RUNNING:
            raise KernelError("this kernel session is already started")
        self._state = _State.RUNNING
        try:
            await self._launch_in_time()
        except BaseException:
            await self._close()
            raise

    async def restart(self) -> None:
        """Replace the kernel with a fresh process and run ``setup_code`` again."""
        self._require_running()
        async with self._get_lock():
            await self._relaunch(graceful=True)

    async def shutdown(self) -> None:
        """Stop the kernel and everything it started, and remove ``runtime_dir``; idempotent."""
        if self._state is _State.CLOSED:
            return
        await self._close()

    async def __aenter__(self) -> KernelSession:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    def _require_running(self) -> AsyncKernelManager:
        if self._state is _State.CLOSED:
            raise KernelError("this kernel session is closed")
        if self._state is _State.NEW or self._km is None:
            raise KernelError(
                "this kernel session is not started; use `async with KernelSession() as ks` "
                "or `await ks.start()` first"
            )
        return self._km

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _launch_in_time(self) -> None:
        """Launch within ``startup_timeout``, however the kernel or its setup code hangs."""
        try:
            await asyncio.wait_for(self._launch(), self.startup_timeout)
        except asyncio.TimeoutError:
            raise KernelStartError(
                f"the {self.kernel_name!r} kernel did not start within "
                f"{self.startup_timeout:.2g} s{self._log_tail()}"
            ) from None

    async def _launch(self) -> None:
        protect_host_memory()
        self.cwd.mkdir(parents=True, exist_ok=True)
        ipython_dir = self.runtime_dir / "ipython"
        ipython_dir.mkdir(exist_ok=True)
        env = {"IPYTHONDIR": str(ipython_dir), "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
        env = kernel_env(self._env_names, {**env, **self._extra_env})
        km = AsyncKernelManager(
            kernel_name=self.kernel_name,
            transport="ipc",
            ip=str(self.runtime_dir / "k"),
            connection_file=str(self.runtime_dir / "kernel.json"),
        )
        self._km = km
        log_path = self.runtime_dir / "kernel.log"
        try:
            with open(log_path, "ab") as log:
                await km.start_kernel(
                    env=env,
                    cwd=str(self.cwd),
                    stdout=log,
                    stderr=log,
                    # No history database: the session's record is the notebook.
                    extra_arguments=["--HistoryManager.enabled=False"],
                )
        except Exception as exc:
            raise KernelStartError(
                f"could not start the {self.kernel_name!r} kernel: {exc}"
            ) from exc
        self._leftovers.pgid = getattr(km.provisioner, "pgid", None)

        kc = km.client()
        kc.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        self._kc = kc
        try:
            await kc.wait_for_ready(timeout=self.startup_timeout)
        except RuntimeError as exc:
            raise KernelStartError(
                f"the {self.kernel_name!r} kernel did not become ready: {exc}{self._log_tail()}"
            ) from exc

        await self._run_setup()

    async def _run_setup(self) -> None:
        if self.setup_code:
            result = await self._execute(
                self.setup_code,
                timeout=self.startup_timeout,
                silent=True,
                store_history=False,
                on_output=None,
                recover=False,
                collector=OutputCollector(100_000),
            )
            if result.status != "ok":
                ename, evalue = result.error or ("Error", "")
                details = self._error_text(result.outputs)
                raise KernelStartError(
                    f"the kernel's setup code failed ({result.status}): {ename}: {evalue}"
                    + (f"\n{details}" if details else "")
                    + (self._log_tail() if result.status == "kernel_died" else "")
                )

    async def _relaunch(self, *, graceful: bool) -> None:
        try:
            await self._stop_kernel(graceful=graceful)
            await self._launch_in_time()
        except BaseException:
            await self._close()
            raise

    async def _close(self) -> None:
        self._state = _State.CLOSED
        try:
            await self._stop_kernel(graceful=not self._busy)
        finally:
            # Whatever happened above (even cancellation), no process or file survives.
            remove_leftovers(self._leftovers)
            untrack(self._leftovers)

    async def _stop_kernel(self, *, graceful: bool) -> None:
        """Stop the kernel process and its process group, and release sockets and files."""
        km, kc = self._km, self._kc
        self._km = self._kc = None
        self._busy = False
        if kc is not None:
            kc.stop_channels()
        if km is None:
            return
        pgid = self._leftovers.pgid
        stopped = False
        try:
            process = getattr(km.provisioner, "process", None)
            if process is not None:
                # ipykernel's own shutdown terminates the kernel's children and then waits for
                # them for many seconds if they are not reaped; killing the group is quicker.
                polite = graceful and self.shutdown_grace > 0
                if polite and not has_exited(process) and not has_children(process.pid):
                    await km.request_shutdown()
                    await self._wait_exit(process, self.shutdown_grace)
                # An exited kernel stays unreaped until provisioner.wait(), so its group ID
                # cannot have been reused: killing the group is safe and takes the kernel's
                # children with it.
                if pgid is not None:
                    kill_group(pgid)
                elif not has_exited(process):
                    process.kill()
                await self._wait_exit(process, _SHUTDOWN_GRACE)
                if km.has_kernel and has_exited(process):
                    await km.provisioner.wait()
            elif km.has_kernel:
                await km.shutdown_kernel(now=not graceful)
            stopped = True
        finally:
            if not stopped:  # cancelled or failed half-way: make sure nothing survives
                kill_group(pgid)
            self._leftovers.pgid = None
            await km.cleanup_resources(restart=False)

    @staticmethod
    async def _wait_exit(process: Any, limit: float) -> None:
        deadline = time.monotonic() + limit
        while not has_exited(process) and time.monotonic() < deadline:
            await asyncio.sleep(_EXIT_POLL)

    # -- execution -------------------------------------------------------------------------

    async def execute(
        self,
        code: str,
        *,
        timeout: float | None = None,
        max_output_bytes: int = 1_000_000,
        silent: bool = False,
        store_history: bool = True,
        on_output: Callable[[dict[str, Any]], Any] | None = None,
        collector: OutputCollector | None = None,
        cell_id: str | None = None,
        user_expressions: Mapping[str, str] | None = None,
    ) -> ExecResult:
        """Run ``code`` in the kernel and collect its outputs.

        Args:
            code: the cell's source.
            timeout: seconds before the kernel is interrupted (``None``: no limit). Variables
                survive an interrupt; a kernel that ignores it is restarted.
            max_output_bytes: output kept in ``ExecResult.outputs`` (the rest is counted).
            silent: run without publishing results or counting the execution.
            store_history: count the execution in the kernel's history.
            on_output: called with each output iopub message as it arrives (may be async).
            collector: where outputs go, for a caller that wants its own settings (then
                ``max_output_bytes`` is not used); the result's outputs come from it.
            cell_id: the notebook cell the code belongs to, sent as the request's ``cellId``.
            user_expressions: expressions the kernel evaluates after the code, answered in the
                same reply (no extra round trip), by name.

        Returns:
            The result; a dead kernel gives status ``kernel_died`` and is restarted.

        Raises:
            KernelError: the session is not running.
            KernelStartError: the kernel died and could not be started again.
        """
        self._require_running()
        async with self._get_lock():
            self._require_running()
            return await self._execute(
                code,
                timeout=timeout,
                silent=silent,
                store_history=store_history,
                on_output=on_output,
                recover=True,
                collector=collector or OutputCollector(max_output_bytes),
                cell_id=cell_id,
                user_expressions=user_expressions,
            )

    async def configure(self, setup_code: str) -> None:
        """Run ``setup_code`` now (silently) and again after every restart.

        A kernel started ahead of time (a warm pool) learns what it is for this way.

        Raises:
            KernelStartError: the setup code failed.
        """
        self._require_running()
        async with self._get_lock():
            self.setup_code = setup_code
            await self._run_setup()

    async def _execute(
        self,
        code: str,
        *,
        timeout: float | None,
        silent: bool,
        store_history: bool,
        on_output: Callable[[dict[str, Any]], Any] | None,
        recover: bool,
        collector: OutputCollector,
        cell_id: str | None = None,
        user_expressions: Mapping[str, str] | None = None,
    ) -> ExecResult:
        km, kc = self._km, self._kc
        assert km is not None and kc is not None
        started = time.monotonic()
        content = {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": dict(user_expressions or {}),
            "allow_stdin": False,
            "stop_on_error": False,
        }
        # ipykernel hands metadata.cellId to IPython's pre_run_cell hook, where the kernel
        # runtime reads it to tie each sub-call to the cell that made it.
        msg = kc.session.msg(
            "execute_request", content, metadata={"cellId": cell_id} if cell_id else None
        )
        kc.shell_channel.send(msg)
        msg_id = msg["header"]["msg_id"]
        self._busy = True
        try:
            outcome, execution_count, reply = await kernel_messages.collect(
                kc,
                msg_id,
                collector,
                timeout,
                on_output,
                interrupt=self._interrupt,
                exited=self._kernel_exited,
                interrupt_grace=self.interrupt_grace,
            )
        except BaseException:
            # Cancelled or a hook failed: stop the abandoned cell so the kernel is free again.
            if self._busy and self._km is not None:
                with contextlib.suppress(Exception):
                    await km.interrupt_kernel()
            raise
        duration = time.monotonic() - started
        self._busy = outcome in ("hung", "died")

        restart = outcome in ("hung", "died") and recover
        died = ""
        if outcome == "died":
            died = f"{describe_exit(await self._reap_dead_kernel())} while running the cell"
        if restart:
            await self._relaunch(graceful=False)
        return execution_result(
            outcome,
            reply,
            collector=collector,
            execution_count=execution_count,
            duration_s=duration,
            timeout=timeout,
            restarted=restart,
            died=died,
        )

    async def _interrupt(self) -> None:
        assert self._km is not None
        with contextlib.suppress(RuntimeError, OSError):
            await self._km.interrupt_kernel()

    async def _kernel_exited(self) -> bool:
        km = self._km
        if km is None:
            return True
        process = getattr(km.provisioner, "process", None)
        if process is None:
            return not await km.is_alive()
        return has_exited(process)

    async def _reap_dead_kernel(self) -> int | None:
        """Kill what the dead kernel left in its group and return its exit status."""
        km = self._km
        process = getattr(km.provisioner, "process", None) if km is not None else None
        kill_group(self._leftovers.pgid)
        if process is None:
            return None
        self._leftovers.pgid = None
        return process.wait()

    def _log_tail(self, limit: int = 2000) -> str:
        """The end of what the kernel process wrote to its own stdout/stderr, if anything."""
        try:
            data = (self.runtime_dir / "kernel.log").read_bytes()
        except OSError:
            return ""
        text = data[-limit:].decode("utf-8", "replace").strip()
        return f"\nkernel log:\n{text}" if text else ""

    @staticmethod
    def _error_text(outputs: list[Any]) -> str:
        for output in outputs:
            if output["output_type"] == "error":
                return strip_ansi("\n".join(output["traceback"]))
        return ""
