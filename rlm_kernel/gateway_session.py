"""A kernel on a gateway with the contract of ``KernelSession``; see :mod:`rlm_kernel.gateway`.

Each start creates a kernel through the gateway's REST API, opens its websocket, uploads the
session's files (``rlm_kernel.upload`` receives them in the kernel) and runs the setup code. A
kernel that dies or ignores an interrupt is deleted and replaced by a new one set up the same
way. Every kernel is deleted on shutdown, on cancellation, and as a last resort at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import enum
import hashlib
import inspect
import os
import pathlib
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import upload
from .errors import KernelError, KernelStartError
from .gateway_wire import Channels, GatewayAuthError, GatewayError, Rest
from .kernel import ExecResult, execution_result
from .outputs import OutputCollector, strip_ansi

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = ["GatewaySession"]

CHUNK_BYTES = 1024 * 1024
# Chunks sent before the first acknowledgement is awaited: enough to keep loopback and LAN
# links busy, little enough that the gateway never holds more than a few MiB of a context.
WINDOW = 8
_OUTPUT_MSG_TYPES = frozenset(
    {"stream", "display_data", "execute_result", "error", "clear_output", "update_display_data"}
)
# How long to wait for a message before asking the gateway whether the kernel still exists.
_LIVENESS_INTERVAL = 5.0
_READY_RETRY = 1.0
_UPLOAD_STALL = 60.0
_SHUTDOWN_TIMEOUT = 10.0
_DELETE_RETRY = 0.25

_live_kernels: dict[tuple[str, str], Rest] = {}
_atexit_registered = False


def _delete_leftovers_at_exit() -> None:
    for (_, kernel_id), rest in list(_live_kernels.items()):
        rest.delete_now(f"/api/kernels/{kernel_id}")
    _live_kernels.clear()


def _track(rest: Rest, kernel_id: str) -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_delete_leftovers_at_exit)
        _atexit_registered = True
    _live_kernels[(rest.url, kernel_id)] = rest


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class GatewaySession:
    """One kernel on a gateway at a time, its uploaded files and its setup code.

    Args:
        gateway: where to start the kernel.
        setup_code: run silently after every start (after the uploads).
        files: uploaded before ``setup_code`` on every start, as ``{name: host path}``; they
            land in ``.rlm/`` inside the kernel's private working directory, so setup code
            refers to them as ``.rlm/<name>``.
        interrupt_grace: seconds a cell may take to stop after a timeout interrupt before the
            kernel is replaced.

    Attributes:
        kernel_id: the gateway's id of the current kernel.
        remote_dir: the kernel's private working directory (known after an upload).
        uploads: per file name: ``path`` in the kernel, ``bytes``, ``sha256``, ``seconds``.
    """

    bridge = "tcp"

    def __init__(
        self,
        gateway: Gateway,
        *,
        setup_code: str | None = None,
        files: Mapping[str, str | os.PathLike[str]] | None = None,
        interrupt_grace: float = 5.0,
    ) -> None:
        self.gateway = gateway
        self.setup_code = setup_code
        self.files = {name: pathlib.Path(path) for name, path in (files or {}).items()}
        self.interrupt_grace = interrupt_grace
        self.kernel_id: str | None = None
        self.remote_dir: str | None = None
        self.uploads: dict[str, dict[str, Any]] = {}
        self._rest = gateway.rest()
        self._channels: Channels | None = None
        self._state = _State.NEW
        self._busy = False
        self._lock: asyncio.Lock | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start a kernel on the gateway, upload the files and run ``setup_code``.

        Raises:
            GatewayAuthError: the gateway refused the token.
            KernelStartError: the kernel did not start, an upload failed or ``setup_code``
                failed; nothing is left on the gateway and the session is closed.
            KernelError: the session was already started or is closed.
        """
        if self._state is not _State.NEW:
            raise KernelError(f"this gateway session is {self._state.value}; start it once")
        self._state = _State.RUNNING
        try:
            await self._launch()
        except BaseException:
            await self._close()
            raise

    async def restart(self) -> None:
        """Replace the kernel with a fresh one (files and setup code again)."""
        self._require_running()
        async with self._get_lock():
            await self._relaunch()

    async def shutdown(self) -> None:
        """Shut the kernel down on the gateway and close the connections; idempotent."""
        if self._state is not _State.CLOSED:
            await self._close()

    async def __aenter__(self) -> GatewaySession:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    def _require_running(self) -> None:
        if self._state is not _State.RUNNING:
            raise KernelError(f"this gateway session is {self._state.value}, not running")

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _launch(self) -> None:
        gateway = self.gateway
        deadline = time.monotonic() + gateway.startup_timeout
        model = await self._rest.request(
            "POST",
            "/api/kernels",
            {"name": gateway.kernel_name, "env": {"KERNEL_RLM": "1", **gateway.env}},
            what=f"start a {gateway.kernel_name!r} kernel",
            timeout=gateway.startup_timeout,
        )
        self.kernel_id = str(model["id"])
        _track(self._rest, self.kernel_id)
        self._channels = await Channels.connect(
            self._rest, self.kernel_id, timeout=gateway.request_timeout
        )
        await self._wait_ready(deadline)
        if self.files:
            await self._setup(_receiver_code(), "installing the file receiver", deadline)
            for name, path in self.files.items():
                await self._upload(name, path)
        if self.setup_code:
            await self._setup(self.setup_code, "the kernel's setup code", deadline)

    async def _wait_ready(self, deadline: float) -> None:
        channels = self._channels
        assert channels is not None
        while True:
            msg_id = await channels.send("shell", "kernel_info_request", {})
            retry = time.monotonic() + _READY_RETRY
            while time.monotonic() < retry:
                try:
                    msg = await channels.get("shell", retry - time.monotonic())
                except asyncio.TimeoutError:
                    break
                if msg is None:
                    raise KernelStartError("the gateway closed the kernel's websocket at start")
                if msg["parent_header"].get("msg_id") == msg_id:
                    return
            if time.monotonic() >= deadline:
                raise KernelStartError(
                    f"the kernel on the gateway did not become ready within "
                    f"{self.gateway.startup_timeout:g} s"
                )

    async def _setup(self, code: str, what: str, deadline: float) -> None:
        result = await self._execute(
            code,
            timeout=max(1.0, deadline - time.monotonic()),
            silent=True,
            store_history=False,
            on_output=None,
            recover=False,
            collector=OutputCollector(100_000),
        )
        if result.status != "ok":
            ename, evalue = result.error or ("Error", "")
            details = _error_text(result.outputs)
            raise KernelStartError(
                f"{what} failed on the gateway's kernel ({result.status}): {ename}: {evalue}"
                + (f"\n{details}" if details else "")
            )

    async def _upload(self, name: str, path: pathlib.Path) -> None:
        """Send one file in chunks; the kernel checks size and SHA-256 and answers."""
        channels = self._channels
        assert channels is not None
        comm_id = uuid.uuid4().hex
        started = time.monotonic()
        digest = hashlib.sha256()
        size = sent = acked = 0
        try:
            handle = open(path, "rb")  # noqa: SIM115 (closed below; reads interleave with awaits)
        except OSError as exc:
            raise KernelStartError(f"cannot read {path} to send it to the kernel: {exc}") from None
        with handle:
            opening = {"comm_id": comm_id, "target_name": upload.TARGET, "data": {"name": name}}
            await channels.send("shell", "comm_open", opening)
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
                sent += 1
                data = {"comm_id": comm_id, "data": {"seq": sent}}
                await channels.send("shell", "comm_msg", data, buffers=[chunk])
                while sent - acked >= WINDOW:
                    acked = int((await self._comm_reply(comm_id, name)).get("ack") or acked)
        end = {"end": True, "size": size, "sha256": digest.hexdigest()}
        await channels.send("shell", "comm_msg", {"comm_id": comm_id, "data": end})
        while True:
            reply = await self._comm_reply(comm_id, name)
            if reply.get("done"):
                break
        if not reply.get("ok"):
            raise KernelStartError(
                f"{name} arrived altered in the kernel: {reply.get('size')} bytes with SHA-256 "
                f"{reply.get('sha256')}, sent {size} bytes with SHA-256 {digest.hexdigest()}"
            )
        remote = str(reply["path"])
        self.remote_dir = os.path.dirname(os.path.dirname(remote))
        self.uploads[name] = {
            "path": remote,
            "bytes": size,
            "sha256": digest.hexdigest(),
            "seconds": round(time.monotonic() - started, 4),
        }

    async def _comm_reply(self, comm_id: str, name: str) -> dict[str, Any]:
        channels = self._channels
        assert channels is not None
        deadline = time.monotonic() + _UPLOAD_STALL
        while True:
            try:
                msg = await channels.get("iopub", max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise KernelStartError(
                    f"the kernel stopped acknowledging {name} for {_UPLOAD_STALL:g} s"
                ) from None
            if msg is None:
                raise KernelStartError(f"the kernel's websocket closed while sending {name}")
            content = msg.get("content") or {}
            if msg["header"]["msg_type"] == "comm_msg" and content.get("comm_id") == comm_id:
                data = content.get("data") or {}
                if "error" in data:
                    raise KernelStartError(f"sending {name} to the kernel failed: {data['error']}")
                return data

    async def _relaunch(self) -> None:
        try:
            await self._stop_kernel()
            await self._launch()
        except BaseException:
            await self._close()
            raise

    async def _close(self) -> None:
        self._state = _State.CLOSED
        try:
            await self._stop_kernel()
        finally:
            self._rest.close()

    async def _stop_kernel(self) -> None:
        """Close the websocket and delete the kernel on the gateway; never leaves it running."""
        channels, kernel_id = self._channels, self.kernel_id
        self._channels = self.kernel_id = None
        self._busy = False
        if channels is not None:
            await channels.aclose()
        if kernel_id is None:
            return
        path = f"/api/kernels/{kernel_id}"
        try:
            gone = await self._delete(path)
        except BaseException:
            # Cancelled (Ctrl-C) while the gateway was asked: ask once more, without a loop.
            if self._rest.delete_now(path):
                _live_kernels.pop((self._rest.url, kernel_id), None)
            raise
        if gone or self._rest.delete_now(path):
            _live_kernels.pop((self._rest.url, kernel_id), None)
        # Otherwise it stays tracked and the exit handler asks once more.

    async def _delete(self, path: str) -> bool:
        """DELETE a kernel, retrying while the gateway cannot yet (it refuses during a restart)."""
        deadline = time.monotonic() + _SHUTDOWN_TIMEOUT
        while True:
            try:
                await self._rest.request(
                    "DELETE", path, what="shut its kernel down", timeout=_SHUTDOWN_TIMEOUT
                )
                return True
            except GatewayAuthError:
                return False
            except GatewayError as exc:
                if exc.status == 404:
                    return True
                if time.monotonic() + _DELETE_RETRY >= deadline:
                    return False
            await asyncio.sleep(_DELETE_RETRY)

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
        """Run ``code`` in the kernel on the gateway; the same contract as ``KernelSession``.

        Raises:
            KernelError: the session is not running.
            KernelStartError: the kernel died and no new one could be started.
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
        channels = self._channels
        assert channels is not None
        started = time.monotonic()
        content = {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": dict(user_expressions or {}),
            "allow_stdin": False,
            "stop_on_error": False,
        }
        # The kernel runtime reads metadata.cellId to tie sub-calls to their cell.
        metadata = {"cellId": cell_id} if cell_id else None
        msg_id = await channels.send("shell", "execute_request", content, metadata=metadata)
        self._busy = True
        try:
            outcome, count, reply = await self._collect(msg_id, collector, timeout, on_output)
        except BaseException:
            if self._busy and self.kernel_id is not None:
                with contextlib.suppress(Exception):
                    await self._interrupt()
            raise
        duration = time.monotonic() - started
        self._busy = outcome in ("hung", "died")
        restart = outcome in ("hung", "died") and recover
        if restart:
            await self._relaunch()
        return execution_result(
            outcome,
            reply,
            collector=collector,
            execution_count=count,
            duration_s=duration,
            timeout=timeout,
            restarted=restart,
            died="the kernel on the gateway died while running the cell",
            replaced="replaced",
        )

    async def _collect(
        self,
        msg_id: str,
        collector: OutputCollector,
        timeout: float | None,
        on_output: Callable[[dict[str, Any]], Any] | None,
    ) -> tuple[str, int | None, dict[str, Any] | None]:
        """Read this request's iopub messages until idle, then its shell reply.

        Returns ``(outcome, execution_count, reply content)``; outcome is ``done``, ``timeout``
        (interrupted in time), ``hung`` (the interrupt did not take) or ``died`` (the gateway
        reported the kernel restarting or dead, dropped the websocket, or forgot the kernel).
        """
        channels = self._channels
        assert channels is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        interrupted = False
        count: int | None = None
        while True:
            wait = _LIVENESS_INTERVAL
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            try:
                msg = await channels.get("iopub", wait)
            except asyncio.TimeoutError:
                msg = {}
            if msg is None:
                return "died", count, None
            if msg:
                msg_type = msg["header"]["msg_type"]
                parent = msg["parent_header"].get("msg_id")
                state = (msg.get("content") or {}).get("execution_state")
                if msg_type == "status" and state in ("restarting", "dead"):
                    return "died", count, None
                if parent == msg_id:
                    if msg_type == "status" and state == "idle":
                        break
                    if msg_type in _OUTPUT_MSG_TYPES:
                        collector.add(msg)
                        if on_output is not None:
                            result = on_output(msg)
                            if inspect.isawaitable(result):
                                await result
                    elif msg_type == "execute_input":
                        count = msg["content"].get("execution_count")
            if deadline is not None and time.monotonic() >= deadline:
                if interrupted:
                    return "hung", count, None
                await self._interrupt()
                interrupted = True
                deadline = time.monotonic() + self.interrupt_grace
            elif not msg and not await self._kernel_exists():
                return "died", count, None
        while True:
            try:
                reply = await channels.get("shell", _LIVENESS_INTERVAL)
            except asyncio.TimeoutError:
                if not await self._kernel_exists():
                    return "died", count, None
                continue
            if reply is None:
                return "died", count, None
            if reply["parent_header"].get("msg_id") == msg_id:
                content = reply["content"]
                count = content.get("execution_count", count)
                return ("timeout" if interrupted else "done"), count, content

    async def _interrupt(self) -> None:
        with contextlib.suppress(GatewayError):
            await self._rest.request(
                "POST", f"/api/kernels/{self.kernel_id}/interrupt", what="interrupt its kernel"
            )

    async def _kernel_exists(self) -> bool:
        try:
            model = await self._rest.request(
                "GET", f"/api/kernels/{self.kernel_id}", what="look its kernel up"
            )
        except GatewayAuthError:
            raise
        except GatewayError as exc:
            return exc.status != 404  # unreachable for a moment is not dead
        return (model or {}).get("execution_state") != "dead"


def _receiver_code() -> str:
    """Code that installs ``rlm_kernel.upload`` in the kernel without leaving names behind."""
    source = pathlib.Path(upload.__file__).read_text(encoding="utf-8")
    return (
        "def _rlm_upload_boot():\n"
        "    namespace = {'__name__': 'rlm_upload'}\n"
        f"    exec(compile({source!r}, 'rlm_upload.py', 'exec'), namespace)\n"
        "    namespace['install'](get_ipython())\n"
        "_rlm_upload_boot()\n"
        "del _rlm_upload_boot\n"
    )


def _error_text(outputs: list[Any]) -> str:
    for output in outputs:
        if output["output_type"] == "error":
            return strip_ansi("\n".join(output["traceback"]))
    return ""
