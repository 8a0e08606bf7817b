"""The wire to a Kernel Gateway or Enterprise Gateway: its REST API and a kernel's websocket.

Both go through tornado (the HTTP and websocket library that Jupyter's own servers are built on)
with the gateway's token in the ``Authorization`` header of every request, the websocket
handshake included. Messages use the gateway's default websocket protocol: one JSON text frame
per Jupyter message with a ``channel`` field, or a binary frame when a message carries buffers.

``jupyter_server``'s ``GatewayKernelClient`` was the first choice, but on a loopback gateway
with a token its websocket handshake sends no ``Authorization`` header (the gateway answers
401), and while it waits for a message it spins on ``asyncio.sleep(0)``, using a full core; its
configuration is also one process-wide singleton, so one process could not talk to two gateways.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import struct
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from .errors import KernelError, UsageError

__all__ = ["Channels", "GatewayAuthError", "GatewayError", "Rest", "public_url"]

# Outputs larger than this in one message are refused by the websocket (and end the session).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
_CLOSED: dict[str, Any] = {"closed": True}


class GatewayError(KernelError):
    """The gateway could not be reached, or refused or failed a request.

    Attributes:
        status: the HTTP status the gateway answered with, if it answered.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GatewayAuthError(GatewayError, UsageError):
    """The gateway refused the token (HTTP 401 or 403)."""


def public_url(url: str) -> str:
    """The gateway URL without credentials or query, safe to write in a notebook."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _describe_failure(url: str, what: str, exc: BaseException) -> GatewayError:
    where = public_url(url)
    if isinstance(exc, HTTPClientError) and exc.code in (401, 403):
        return GatewayAuthError(
            f"the gateway at {where} refused the token (HTTP {exc.code}); give the right one "
            "with gateway_token= or JUPYTER_GATEWAY_AUTH_TOKEN",
            status=exc.code,
        )
    if isinstance(exc, HTTPClientError) and exc.code != 599:
        detail = ""
        if exc.response is not None and exc.response.body:
            with contextlib.suppress(ValueError, AttributeError):
                detail = str(json.loads(exc.response.body).get("message") or "")
        suffix = f": {detail}" if detail else ""
        message = f"the gateway at {where} failed to {what} (HTTP {exc.code}){suffix}"
        return GatewayError(message, status=exc.code)
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return GatewayError(f"cannot reach the gateway at {where} to {what}: {reason}")


class Rest:
    """The gateway's REST API, with the token on every request.

    Args:
        url: the gateway's base URL (``http://host:8888``, with any base path).
        token: the gateway's auth token, or ``None`` for a gateway without one.
        timeout: seconds for each request.
        validate_cert: check the server's TLS certificate.
    """

    def __init__(
        self, url: str, token: str | None, *, timeout: float = 30.0, validate_cert: bool = True
    ) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"token {token}"} if token else {}
        self.timeout = timeout
        self.validate_cert = validate_cert
        self._client: AsyncHTTPClient | None = None

    async def request(
        self, method: str, path: str, body: Any = None, *, what: str, timeout: float | None = None
    ) -> Any:
        """Send one request and return its decoded JSON (``None`` for an empty body).

        Raises:
            GatewayAuthError: the token was refused.
            GatewayError: the gateway is unreachable or answered with an error.
        """
        if self._client is None:
            self._client = AsyncHTTPClient(force_instance=True)
        payload = None if body is None else json.dumps(body)
        if payload is None and method in ("POST", "PUT", "PATCH"):
            payload = "{}"
        request = HTTPRequest(
            self.url + path,
            method=method,
            headers={**self.headers, "Content-Type": "application/json"},
            body=payload,
            connect_timeout=timeout or self.timeout,
            request_timeout=timeout or self.timeout,
            validate_cert=self.validate_cert,
        )
        try:
            response = await self._client.fetch(request)
        except (HTTPClientError, OSError) as exc:
            raise _describe_failure(self.url, what, exc) from None
        return json.loads(response.body) if response.body else None

    def close(self) -> None:
        """Release the HTTP connections."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def delete_now(self, path: str, timeout: float = 5.0) -> bool:
        """A blocking DELETE for when no event loop can run (at exit, after a second Ctrl-C)."""
        request = urllib.request.Request(self.url + path, method="DELETE", headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                return True
        except urllib.error.HTTPError as exc:
            return exc.code == 404
        except OSError:
            return False


def _binary_frame(msg: dict[str, Any], buffers: list[bytes]) -> bytes:
    """A message with buffers as one binary frame: part count, offsets, JSON, the buffers."""
    parts = [json.dumps(msg, default=json_default).encode("utf-8"), *buffers]
    offsets = [4 * (len(parts) + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"!{len(parts) + 1}I", len(parts), *offsets) + b"".join(parts)


def _parse_frame(frame: str | bytes) -> dict[str, Any]:
    if isinstance(frame, str):
        return json.loads(frame)
    (count,) = struct.unpack_from("!I", frame)
    offsets = [*struct.unpack_from(f"!{count}I", frame, 4), len(frame)]
    parts = [frame[start:stop] for start, stop in itertools.pairwise(offsets)]
    msg = json.loads(parts[0])
    msg["buffers"] = parts[1:]
    return msg


class Channels:
    """One kernel's websocket: send Jupyter messages, read them back per channel.

    A reader task moves each incoming message into the queue of its channel; when the websocket
    closes, every reader gets :data:`None` from :meth:`get` from then on.
    """

    def __init__(self, ws: WebSocketClientConnection) -> None:
        self._ws = ws
        self._session = Session(key=b"", username="rlm-kernel")
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {
            name: asyncio.Queue() for name in ("shell", "iopub", "control", "stdin")
        }
        self.closed = False
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, rest: Rest, kernel_id: str, *, timeout: float) -> Channels:
        """Open the websocket of a kernel on the gateway, authenticated like the REST calls."""
        parts = urllib.parse.urlsplit(rest.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        path = f"{parts.path}/api/kernels/{urllib.parse.quote(kernel_id)}/channels"
        request = HTTPRequest(
            urllib.parse.urlunsplit((scheme, parts.netloc, path, "", "")),
            headers=rest.headers,
            connect_timeout=timeout,
            request_timeout=timeout,
            validate_cert=rest.validate_cert,
        )
        try:
            ws = await websocket_connect(request, max_message_size=MAX_MESSAGE_BYTES)
        except (HTTPClientError, OSError) as exc:
            raise _describe_failure(rest.url, "open the kernel's websocket", exc) from None
        return cls(ws)

    async def _read(self) -> None:
        try:
            while True:
                frame = await self._ws.read_message()
                if frame is None:
                    break
                msg = _parse_frame(frame)
                queue = self._queues.get(msg.get("channel") or "")
                if queue is not None:
                    queue.put_nowait(msg)
        finally:
            self.closed = True
            for queue in self._queues.values():
                queue.put_nowait(_CLOSED)

    async def send(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any],
        *,
        buffers: list[bytes] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Send one message; returns its ``msg_id``. Waits until the socket has taken it."""
        msg = self._session.msg(msg_type, content=content, metadata=metadata)
        msg["channel"] = channel
        if self.closed:
            raise GatewayError("the kernel's websocket is closed")
        if buffers:
            await self._ws.write_message(_binary_frame(msg, buffers), binary=True)
        else:
            await self._ws.write_message(json.dumps(msg, default=json_default))
        return msg["header"]["msg_id"]

    async def get(self, channel: str, timeout: float | None) -> dict[str, Any] | None:
        """The next message on ``channel``; raises ``TimeoutError``; ``None`` once closed."""
        queue = self._queues[channel]
        if self.closed and queue.empty():
            return None
        if timeout is not None and timeout <= 0 and queue.empty():
            raise asyncio.TimeoutError
        # asyncio.wait, not wait_for: on Python < 3.12 wait_for can swallow a cancellation that
        # arrives as its timeout fires, and a cancelled run must stop.
        getter = asyncio.ensure_future(queue.get())
        try:
            done, _ = await asyncio.wait({getter}, timeout=timeout)
        finally:
            if not getter.done():
                getter.cancel()
        if not done:
            raise asyncio.TimeoutError
        msg = getter.result()
        if msg is _CLOSED:
            queue.put_nowait(_CLOSED)  # every later reader sees it too
            return None
        return msg

    async def aclose(self) -> None:
        """Close the websocket and stop the reader."""
        self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
