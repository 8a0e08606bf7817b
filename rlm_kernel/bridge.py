"""The host end of the kernel-to-host socket that carries sub-calls.

Code running in the kernel (``runtime.py``) calls ``llm_query`` and friends; those block on one
persistent connection to a :class:`BridgeServer` in the host process, which hands each prompt to
a :class:`SubcallHandler` and sends the answers back. The server knows nothing of notebooks or
models: the handler does the work and enforces the budgets.

The messages on the socket, and how each is answered, are in :mod:`rlm_kernel.bridge_wire`.

When a connection closes (say the kernel was interrupted in the middle of a call and dropped it),
the sub-calls still running for it are cancelled.

Bounds
------

Nothing a peer sends makes the host allocate more than it has received: a frame's buffer grows
with the bytes that arrive, not with the size its header announces. A frame larger than
``max_frame_bytes`` is read and thrown away as it arrives; its request gets a ``ProtocolError``
naming the limit (when its ``id`` can be read from its first bytes) and the connection stays in
step. At most ``max_connections`` connections are open at once; more are closed as soon as they
are accepted, so a flood of idle connections cannot exhaust the host's file descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import os
import secrets
import stat
import sys
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol

from .bridge_wire import (
    HEADER,
    ID_PREFIX,
    MAX_HELLO_BYTES,
    Reply,
    SubcallRequest,
    ToolRequest,
    check_request,
    encode,
    error_reply,
    protocol_error,
)
from .errors import BridgeError
from .llm import prompt_cache

__all__ = [
    "BridgeServer",
    "Reply",
    "SubcallHandler",
    "SubcallRequest",
    "ToolRequest",
    "socket_dir",
]

_READ_SIZE = 64 * 1024
_KEEP_BUFFER = 1024 * 1024
# A frame announced up to this size gets its whole buffer at once (received without copies);
# above it the buffer doubles as bytes arrive, so a header alone cannot make the host allocate.
_PREALLOCATE_BYTES = 8 * 1024 * 1024
# Unix socket paths hold at most 107 bytes on Linux and 103 on macOS (sun_path, with its NUL).
MAX_UNIX_PATH = 103 if sys.platform == "darwin" else 107
_EAGER_TASKS = sys.version_info >= (3, 12)
_CLOSE_GRACE = 30.0


class SubcallHandler(Protocol):
    """What the server asks of the host: run one sub-call, take the final answer."""

    async def subcall(self, request: SubcallRequest) -> str:
        """Answer one prompt.

        An exception reaches the kernel as the error record of
        :meth:`rlm_kernel.record.ErrorRecord.from_exception` (``BudgetExceeded`` stays
        ``BudgetExceeded``; anything else is a ``SubcallError``).
        """
        ...

    async def final(self, value: str, *, via: str, cell: str | None) -> None:
        """Take the run's final answer, sent by ``FINAL``, ``FINAL_VAR`` or the ``answer`` dict."""
        ...

    # Optional: ``async def tool(self, request: ToolRequest) -> str`` runs a host tool and
    # returns the JSON text of its result; a handler without it has no tools.


class _Connection(asyncio.BufferedProtocol):
    """One kernel's connection: frame parsing, authentication, dispatch, cancellation on close.

    A buffered protocol: the transport reads straight into our buffer, and a frame whose size
    is known gets a buffer of that size, so a prompt of megabytes is received without copies.
    """

    def __init__(self, server: BridgeServer) -> None:
        self._server = server
        self._buf = bytearray(_READ_SIZE)
        self._filled = 0  # bytes of self._buf holding received data
        self._want = 0  # size of the frame being received, once its header is in
        self._authenticated = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._transport: asyncio.Transport | None = None
        self._handshake: asyncio.TimerHandle | None = None
        # An oversized frame being thrown away: bytes still to skip, and its first bytes (for
        # the request id).
        self._discard = 0
        self._discard_size = 0
        self._discard_head = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        server = self._server
        if len(server._connections) >= server.max_connections:
            server.refused_connections += 1
            transport.abort()  # frees the descriptor at once; connection_lost follows
            return
        server._connections.add(self)
        self._handshake = asyncio.get_running_loop().call_later(
            server.handshake_timeout, self._handshake_expired
        )

    def _handshake_expired(self) -> None:
        self._handshake = None
        if not self._authenticated and self._transport is not None:
            self._refuse(f"no hello within {self._server.handshake_timeout:g} s")

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        if self._handshake is not None:
            self._handshake.cancel()
            self._handshake = None
        # The kernel gave up on these requests (interrupt, crash): stop spending on them.
        for task in self._tasks:
            task.cancel()
        self._buf = bytearray()
        self._filled = 0

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def get_buffer(self, sizehint: int) -> memoryview:
        filled = self._filled
        need = filled + _READ_SIZE
        if self._want > need:
            # Grow with what has arrived, not with what the header promises.
            need = (
                self._want
                if self._want <= _PREALLOCATE_BYTES
                else min(self._want, max(need, 2 * len(self._buf)))
            )
        if len(self._buf) < need:
            grown = bytearray(need)
            grown[:filled] = memoryview(self._buf)[:filled]
            self._buf = grown
        return memoryview(self._buf)[filled:]

    def buffer_updated(self, nbytes: int) -> None:
        start = 0  # frames begin at the front of the buffer
        if self._discard:
            # The new bytes continue an oversized frame that is being thrown away.
            start = self._skip(self._filled, nbytes)
            if self._discard:
                return
        else:
            self._filled += nbytes
        buf, filled = self._buf, self._filled
        self._want = 0
        while filled - start >= 4:
            (size,) = HEADER.unpack_from(buf, start)
            if not self._authenticated and size > MAX_HELLO_BYTES:
                self._refuse("the first frame must be a small hello")
                return
            if size > self._server.max_frame_bytes:
                self._discard = self._discard_size = size
                self._discard_head.clear()
                start = self._skip(start + 4, filled - start - 4)
                if self._discard or self._transport is None or self._transport.is_closing():
                    return
                buf, filled = self._buf, self._filled
                continue
            end = start + 4 + size
            if end > filled:
                self._want = 4 + size
                break
            body = bytes(memoryview(buf)[start + 4 : end])
            start = end
            self._on_frame(body)
            if self._transport is None or self._transport.is_closing():
                return
        if start:
            rest = filled - start
            buf[:rest] = bytes(memoryview(buf)[start:filled])
            self._filled = rest
        if self._filled == 0 and len(buf) > _KEEP_BUFFER:
            self._buf = bytearray(_READ_SIZE)  # a large frame has gone; give the memory back

    def _skip(self, start: int, nbytes: int) -> int:
        """Throw away the oversized frame's part of the ``nbytes`` received at ``start``.

        Whatever follows it moves to the front of the buffer; returns 0, where parsing goes
        on. Once the whole frame has gone, its request (if its id was readable) gets an error.
        """
        self._filled = start + nbytes
        take = min(self._discard, nbytes)
        missing = 64 - len(self._discard_head)
        if missing > 0:
            self._discard_head += self._buf[start : start + min(take, missing)]
        self._discard -= take
        rest = bytes(memoryview(self._buf)[start + take : self._filled])
        if len(self._buf) > _KEEP_BUFFER:
            self._buf = bytearray(max(_READ_SIZE, len(rest)))
        self._buf[: len(rest)] = rest
        self._filled = len(rest)
        if not self._discard:
            self._reject_oversized()
        return 0

    def _reject_oversized(self) -> None:
        limit = self._server.max_frame_bytes
        message = (
            f"a request of {self._discard_size} bytes is larger than the bridge accepts "
            f"({limit} bytes); send less at once (fewer or shorter prompts per call)"
        )
        match = ID_PREFIX.match(bytes(self._discard_head))
        self._discard_head.clear()
        if match is None:
            # Without an id there is no caller to tell; close rather than guess.
            self._send(protocol_error(message))
            if self._transport is not None:
                self._transport.close()
            return
        self._send({"id": int(match.group(1)), **protocol_error(message)})

    def _send(self, message: dict[str, Any]) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(encode(message))

    def _refuse(self, reason: str) -> None:
        self._send(protocol_error(f"authentication failed: {reason}", "AuthError"))
        assert self._transport is not None
        self._transport.close()

    def _on_frame(self, body: bytes) -> None:
        try:
            msg = json.loads(body)
        except ValueError as exc:
            msg = exc
        if not isinstance(msg, dict):
            if not self._authenticated:
                self._refuse("the first frame must be a JSON object")
            else:
                self._send(protocol_error("each frame must be a JSON object"))
            return
        if not self._authenticated:
            token = msg.get("token")
            if (
                msg.get("op") == "hello"
                and isinstance(token, str)
                and hmac.compare_digest(token.encode(), self._server.token.encode())
            ):
                self._authenticated = True
                if self._handshake is not None:
                    self._handshake.cancel()
                    self._handshake = None
                self._send({"op": "hello", "ok": True})
            else:
                self._refuse("wrong token")
            return
        rid = msg.get("id")
        if not isinstance(rid, int) or isinstance(rid, bool):
            self._send(protocol_error("a request needs an integer 'id'"))
            return
        problem = check_request(msg)
        if problem:
            self._send({"id": rid, **protocol_error(problem)})
            return
        if msg["op"] == "subcall":
            contexts = msg.get("contexts") or [None] * len(msg["prompts"])
            requests = [
                SubcallRequest(p, msg["kind"], msg.get("model"), msg.get("cell"), c)
                for p, c in zip(msg["prompts"], contexts, strict=True)
            ]
            coro = self._subcall(rid, requests)
        elif msg["op"] == "tool":
            request = ToolRequest(msg["name"], msg["args"], msg["kwargs"], msg.get("cell"))
            coro = self._tool(rid, request)
        else:
            coro = self._final(rid, msg["value"], msg["via"], msg.get("cell"))
        self._start(coro)

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        loop = asyncio.get_running_loop()
        if _EAGER_TASKS:
            # The first step runs at once, as a real task: a handler that answers without
            # waiting (a cache hit, a budget refusal) costs no extra turn of the event loop.
            task = asyncio.Task(coro, loop=loop, eager_start=True)
        else:
            task = loop.create_task(coro)
        if not task.done():
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self._server._tasks.add(task)
            task.add_done_callback(self._server._tasks.discard)

    async def _subcall(self, rid: int, requests: list[SubcallRequest]) -> None:
        run = self._server._run_one
        if len(requests) == 1:
            results = [await run(requests[0])]
        else:
            if requests[0].kind == "llm":
                # What the prompts share, for providers that can cache it once for the batch.
                shared = prompt_cache.shared_prefix([r.prompt for r in requests])
                requests = [
                    dataclasses.replace(r, batch=len(requests), shared_prefix=shared)
                    for r in requests
                ]
            # return_exceptions: when this request is cancelled, gather waits until every prompt
            # has ended (a child run saves its notebook and stops its kernel), instead of
            # finishing at the first cancelled one and leaving the others running unawaited.
            done = await asyncio.gather(*[run(r) for r in requests], return_exceptions=True)
            for outcome in done:
                if isinstance(outcome, BaseException):  # only cancellation gets past _answer
                    raise outcome
            results = list(done)
        self._send({"id": rid, "results": results})

    async def _tool(self, rid: int, request: ToolRequest) -> None:
        run = getattr(self._server._handler, "tool", None)
        if run is None:
            message = f"this host has no tools; {request.name!r} is not one"
            self._send({"id": rid, **protocol_error(message, "ToolError")})
            return
        try:
            text = await run(request)
        except Exception as exc:
            self._send({"id": rid, **error_reply(exc)})
            return
        if not isinstance(text, str):
            self._send(
                {"id": rid, **protocol_error("a tool answer must be JSON text", "ToolError")}
            )
            return
        self._send({"id": rid, "ok": text})

    async def _final(self, rid: int, value: str, via: str, cell: str | None) -> None:
        try:
            await self._server._handler.final(value, via=via, cell=cell)
        except Exception as exc:
            self._send({"id": rid, **error_reply(exc)})
        else:
            self._send({"id": rid, "ok": True})


class BridgeServer:
    """Serve sub-calls from kernels over a Unix socket or local TCP.

    Use it as an async context manager, or call :meth:`start` and :meth:`aclose`::

        async with BridgeServer(handler, unix_path=tmp / "bridge.sock") as server:
            ...  # give server.address and server.token to the kernel

    Args:
        handler: runs each sub-call and takes the final answer.
        unix_path: where to create the socket; ``None`` listens on TCP at ``host`` on a free port.
        host: the TCP interface, when ``unix_path`` is ``None``.
        max_concurrency: sub-calls running at once across all connections.
        slots: a semaphore shared with other servers (a run tree's cap), instead of one of
            ``max_concurrency`` slots of its own.
        max_frame_bytes: the largest request accepted after authentication; a larger one is
            refused with a ``ProtocolError`` without being kept in memory.
        handshake_timeout: seconds a new connection has to authenticate before it is closed.
        max_connections: connections open at once; more are closed as soon as they arrive.

    Attributes:
        refused_connections: connections closed on arrival because ``max_connections`` were
            open.

    Raises:
        BridgeError: ``unix_path`` is longer than a Unix socket path may be (see
            :func:`socket_dir` for a directory short enough).
    """

    def __init__(
        self,
        handler: SubcallHandler,
        *,
        unix_path: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        max_concurrency: int = 16,
        slots: asyncio.Semaphore | None = None,
        max_frame_bytes: int = 256 * 1024 * 1024,
        handshake_timeout: float = 10.0,
        max_connections: int = 64,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        self._shared_slots = slots
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        if max_frame_bytes < MAX_HELLO_BYTES or not handshake_timeout > 0:
            raise ValueError(
                f"max_frame_bytes must be at least {MAX_HELLO_BYTES} and handshake_timeout "
                f"positive, not {max_frame_bytes} and {handshake_timeout}"
            )
        self._handler = handler
        self._unix_path = os.fspath(unix_path) if unix_path is not None else None
        if self._unix_path is not None and len(os.fsencode(self._unix_path)) > MAX_UNIX_PATH:
            raise BridgeError(
                f"the bridge socket path is {len(os.fsencode(self._unix_path))} bytes, longer "
                f"than a Unix socket path may be ({MAX_UNIX_PATH}): {self._unix_path} "
                "(use rlm_kernel.bridge.socket_dir() for a short directory)"
            )
        self._host = host
        self.max_concurrency = max_concurrency
        self.max_frame_bytes = max_frame_bytes
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self.refused_connections = 0
        self.token = secrets.token_urlsafe(32)
        self._address = ""
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # every connection's, until done
        self._slots: asyncio.Semaphore | None = None

    @property
    def address(self) -> str:
        """Where kernels connect: ``"unix:/path/to.sock"`` or ``"tcp:127.0.0.1:PORT"``."""
        if not self._address:
            raise BridgeError("the bridge server has not been started; call start() first")
        return self._address

    async def start(self) -> None:
        """Bind the socket and begin accepting kernels."""
        if self._server is not None:
            raise BridgeError("the bridge server is already running")
        loop = asyncio.get_running_loop()
        self._slots = self._shared_slots or asyncio.Semaphore(self.max_concurrency)
        if self._unix_path is not None:
            path = self._unix_path
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)  # left by a host that died; a live one would own a new path
            try:
                self._server = await loop.create_unix_server(lambda: _Connection(self), path)
            except OSError as exc:
                raise BridgeError(f"cannot listen on Unix socket {path}: {exc}") from exc
            os.chmod(path, 0o600)
            self._address = f"unix:{path}"
        else:
            try:
                self._server = await loop.create_server(lambda: _Connection(self), self._host, 0)
            except OSError as exc:
                raise BridgeError(f"cannot listen on {self._host}: {exc}") from exc
            port = self._server.sockets[0].getsockname()[1]
            self._address = f"tcp:{self._host}:{port}"

    async def aclose(self) -> None:
        """Stop accepting, drop every connection (cancelling its work) and remove the socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = set(self._tasks)
        for conn in list(self._connections):
            conn.abort()
        if tasks:
            # Let cancelled work finish its own clean-up (a child run writes its notebook and
            # stops its kernel), within a deadline.
            await asyncio.wait(tasks, timeout=_CLOSE_GRACE)
        await server.wait_closed()
        if self._unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._unix_path)

    async def __aenter__(self) -> BridgeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _run_one(self, request: SubcallRequest) -> dict[str, Any]:
        assert self._slots is not None
        if request.kind == "rlm":
            # A child run makes sub-calls of its own under the same cap: holding a slot while
            # it runs could use up every slot and leave the children waiting for themselves.
            return await self._answer(request)
        async with self._slots:
            return await self._answer(request)

    async def _answer(self, request: SubcallRequest) -> dict[str, Any]:
        try:
            text = await self._handler.subcall(request)
        except Exception as exc:
            return error_reply(exc)
        if not isinstance(text, str):
            return protocol_error(
                f"the sub-call returned {type(text).__name__}, expected str", "SubcallError"
            )
        stop_reason = getattr(text, "stop_reason", None)
        if stop_reason is not None:
            return {"ok": str(text), "stop_reason": str(stop_reason)}
        return {"ok": str(text)}


def socket_dir(prefix: str = "rlm-b-", *, name: str = "bridge.sock") -> Path:
    """Make a private (0700) temporary directory short enough to hold a Unix socket ``name``.

    It is made in the usual temporary directory (``TMPDIR``) when the socket path fits there,
    else in ``/tmp``: a long ``TMPDIR`` (macOS has ~50-character ones; some CI systems longer)
    would otherwise make the socket path overflow its ~107-byte limit. The caller removes it.

    Raises:
        BridgeError: no temporary directory is short enough (only with a very long ``prefix``
            or ``name``).
    """
    # mkdtemp adds 8 random characters to the prefix, then a separator before the name.
    extra = len(prefix) + 8 + 1 + len(name) + 1
    for base in (tempfile.gettempdir(), "/tmp"):
        if len(os.fsencode(base)) + extra <= MAX_UNIX_PATH and os.path.isdir(base):
            return Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    raise BridgeError(
        f"no temporary directory is short enough for a Unix socket named {name!r} "
        f"(at most {MAX_UNIX_PATH} bytes); set TMPDIR to a shorter directory"
    )
