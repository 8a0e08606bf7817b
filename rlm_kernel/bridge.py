"""The host end of the kernel-to-host socket that carries sub-calls.

Code running in the kernel (``runtime.py``) calls ``llm_query`` and friends; those block on one
persistent connection to a :class:`BridgeServer` in the host process, which hands each prompt to
a :class:`SubcallHandler` and sends the answers back. The server knows nothing of notebooks or
models: the handler does the work and enforces the budgets.

Wire protocol
-------------

One connection per kernel, over a Unix socket (the default) or TCP on 127.0.0.1 (for kernels on
another machine, reached through a tunnel). Every message in either direction is one *frame*: a
4-byte big-endian unsigned length followed by that many bytes of UTF-8 JSON holding an object.

1. The kernel's first frame authenticates::

       → {"op": "hello", "token": "<the server's token>"}
       ← {"op": "hello", "ok": true}

   A wrong token (or any other first frame) gets ``{"error": "...", "type": "AuthError"}`` and
   the server closes the connection. Frames before authentication are limited to 64 KiB.

2. After that each request carries an integer ``"id"`` chosen by the kernel, and its response
   echoes it. Responses may arrive in any order, so several requests can be in flight on one
   connection (several threads in the kernel may share it).

   Sub-calls, ``kind`` ``"llm"`` or ``"rlm"``::

       → {"id": 7, "op": "subcall", "kind": "llm", "prompts": ["...", ...], "model": null}
       ← {"id": 7, "results": [{"ok": "answer"},
                               {"error": "ValueError: ...", "type": "SubcallError"},
                               {"error": "sub-call budget exhausted", "type": "BudgetExceeded"},
                               ...]}

   Results are in prompt order. The prompts of a request run concurrently, and at most
   ``max_concurrency`` sub-calls run at once across all connections of the server.

   The final answer, ``via`` ``"FINAL"``, ``"FINAL_VAR"`` or ``"answer"``::

       → {"id": 8, "op": "final", "value": "42", "via": "FINAL"}
       ← {"id": 8, "ok": true}

   A request the server cannot serve (unknown op, malformed fields, a failing ``final``) gets
   ``{"id": ..., "error": "...", "type": "ProtocolError" | "SubcallError" | "BudgetExceeded"}``.

When a connection closes (say the kernel was interrupted in the middle of a call and dropped it),
the sub-calls still running for it are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import secrets
import stat
import struct
import sys
from collections.abc import Coroutine
from typing import Any, Protocol

from .errors import BridgeError, BudgetExceeded

__all__ = ["BridgeServer", "SubcallHandler"]

_HEADER = struct.Struct(">I")
_MAX_HELLO_BYTES = 64 * 1024
_READ_SIZE = 64 * 1024
_KEEP_BUFFER = 1024 * 1024
_KINDS = ("llm", "rlm")
_EAGER_TASKS = sys.version_info >= (3, 12)
_VIAS = ("FINAL", "FINAL_VAR", "answer")


class SubcallHandler(Protocol):
    """What the server asks of the host: run one sub-call, take the final answer."""

    async def subcall(self, prompt: str, *, model: str | None, kind: str) -> str:
        """Answer one prompt; raise ``errors.BudgetExceeded`` when a budget is used up.

        Any other exception counts as a failed sub-call and reaches the kernel as its message.
        """
        ...

    async def final(self, value: str, *, via: str) -> None:
        """Take the run's final answer, sent by ``FINAL``, ``FINAL_VAR`` or the ``answer`` dict."""
        ...


def _encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message).encode("utf-8")
    return _HEADER.pack(len(body)) + body


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        # The kernel gave up on these requests (interrupt, crash): stop spending on them.
        for task in self._tasks:
            task.cancel()
        self._buf = bytearray()
        self._filled = 0

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def get_buffer(self, sizehint: int) -> memoryview:
        need = max(self._want, self._filled + _READ_SIZE)
        if len(self._buf) < need:
            grown = bytearray(need)
            grown[: self._filled] = memoryview(self._buf)[: self._filled]
            self._buf = grown
        return memoryview(self._buf)[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        buf, filled, start = self._buf, self._filled, 0
        self._want = 0
        while filled - start >= 4:
            (size,) = _HEADER.unpack_from(buf, start)
            if not self._authenticated and size > _MAX_HELLO_BYTES:
                self._refuse("the first frame must be a small hello")
                return
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

    def _send(self, message: dict[str, Any]) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(_encode(message))

    def _refuse(self, reason: str) -> None:
        self._send({"error": f"authentication failed: {reason}", "type": "AuthError"})
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
                self._send({"error": "each frame must be a JSON object", "type": "ProtocolError"})
            return
        if not self._authenticated:
            token = msg.get("token")
            if (
                msg.get("op") == "hello"
                and isinstance(token, str)
                and hmac.compare_digest(token.encode(), self._server.token.encode())
            ):
                self._authenticated = True
                self._send({"op": "hello", "ok": True})
            else:
                self._refuse("wrong token")
            return
        rid = msg.get("id")
        if not isinstance(rid, int) or isinstance(rid, bool):
            self._send({"error": "a request needs an integer 'id'", "type": "ProtocolError"})
            return
        problem = _check_request(msg)
        if problem:
            self._send({"id": rid, "error": problem, "type": "ProtocolError"})
            return
        if msg["op"] == "subcall":
            coro = self._subcall(rid, msg["prompts"], msg.get("model"), msg["kind"])
        else:
            coro = self._final(rid, msg["value"], msg["via"])
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

    async def _subcall(self, rid: int, prompts: list[str], model: str | None, kind: str) -> None:
        run = self._server._run_one
        if len(prompts) == 1:
            results = [await run(prompts[0], model, kind)]
        else:
            results = list(await asyncio.gather(*[run(p, model, kind) for p in prompts]))
        self._send({"id": rid, "results": results})

    async def _final(self, rid: int, value: str, via: str) -> None:
        try:
            await self._server._handler.final(value, via=via)
        except BudgetExceeded as exc:
            self._send(
                {"id": rid, "error": str(exc) or "budget exhausted", "type": "BudgetExceeded"}
            )
        except Exception as exc:
            self._send({"id": rid, "error": _describe(exc), "type": "SubcallError"})
        else:
            self._send({"id": rid, "ok": True})


def _check_request(msg: dict[str, Any]) -> str:
    """Return what is wrong with a request, or an empty string."""
    op = msg.get("op")
    if op == "subcall":
        prompts = msg.get("prompts")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            return "'prompts' must be a list of strings"
        if msg.get("kind") not in _KINDS:
            return f"'kind' must be one of {', '.join(_KINDS)}"
        model = msg.get("model")
        if model is not None and not isinstance(model, str):
            return "'model' must be a string or null"
        return ""
    if op == "final":
        if not isinstance(msg.get("value"), str):
            return "'value' must be a string"
        if msg.get("via") not in _VIAS:
            return f"'via' must be one of {', '.join(_VIAS)}"
        return ""
    return f"unknown op {op!r}; expected 'subcall' or 'final'"


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
    """

    def __init__(
        self,
        handler: SubcallHandler,
        *,
        unix_path: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        max_concurrency: int = 16,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        self._handler = handler
        self._unix_path = os.fspath(unix_path) if unix_path is not None else None
        self._host = host
        self.max_concurrency = max_concurrency
        self.token = secrets.token_urlsafe(32)
        self._address = ""
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
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
        self._slots = asyncio.Semaphore(self.max_concurrency)
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
        for conn in list(self._connections):
            conn.abort()
        await server.wait_closed()
        if self._unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._unix_path)

    async def __aenter__(self) -> BridgeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _run_one(self, prompt: str, model: str | None, kind: str) -> dict[str, str]:
        assert self._slots is not None
        async with self._slots:
            try:
                text = await self._handler.subcall(prompt, model=model, kind=kind)
            except BudgetExceeded as exc:
                return {"error": str(exc) or "budget exhausted", "type": "BudgetExceeded"}
            except Exception as exc:
                return {"error": _describe(exc), "type": "SubcallError"}
        if not isinstance(text, str):
            message = f"the sub-call returned {type(text).__name__}, expected str"
            return {"error": message, "type": "SubcallError"}
        return {"ok": text}
