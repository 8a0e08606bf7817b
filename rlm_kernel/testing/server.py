"""A local HTTP server that speaks the Anthropic and OpenAI chat APIs and plays scripted models.

The real ``anthropic`` and ``openai`` SDKs talk to it exactly as to the real services: point
``ANTHROPIC_BASE_URL`` / ``OPENAI_BASE_URL`` at it (see :meth:`FakeModelServer.env`) and use the
key it expects. It serves

- ``POST /v1/messages`` (Anthropic Messages API), streaming (SSE) and not;
- ``POST /v1/chat/completions`` (OpenAI Chat Completions API), streaming (SSE) and not;

records every request without its credentials, estimates token usage (about four characters per
token), simulates prompt caching, and fails on demand (:meth:`FakeModelServer.fail`) so that retry
paths can be tested. It runs on the standard library's threading HTTP server with HTTP/1.1
keep-alive, one thread per connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from .scripted import ScriptedModel, ScriptExhausted

Model = ScriptedModel | Callable[[list[dict]], str] | str
"""A model the server can play: a :class:`ScriptedModel`, a rule ``fn(messages) -> str`` that
answers any number of calls, or a fixed reply text."""

Api = Literal["anthropic", "openai"]

_ROUTES: dict[str, Api] = {"/v1/messages": "anthropic", "/v1/chat/completions": "openai"}
_CREDENTIAL_HEADERS = frozenset(
    {"authorization", "x-api-key", "api-key", "proxy-authorization", "cookie"}
)
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_OPENAI_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}
_DEFAULT_MESSAGES = {
    400: "Invalid request",
    401: "invalid x-api-key",
    404: "Not found",
    429: "Rate limit exceeded",
    500: "Internal server error",
    529: "Overloaded",
}
_STREAM_PIECES = 8  # a streamed reply is cut into at most this many text deltas


def estimate_tokens(chars: int) -> int:
    """Tokens the server bills for ``chars`` characters: ``ceil(chars / 4)``."""
    return math.ceil(chars / 4)


@dataclass
class RecordedRequest:
    """One request the server received, as a test sees it.

    Attributes:
        api: ``"anthropic"`` or ``"openai"``.
        path: the URL path, e.g. ``/v1/messages``.
        model: the ``model`` field of the body, if any.
        stream: whether the client asked for a streamed (SSE) reply.
        body: the parsed JSON body (``None`` if it was not JSON).
        headers: the request headers with lower-case names, credentials removed.
        status: the HTTP status the server answered with.
    """

    api: Api
    path: str
    model: str | None
    stream: bool
    body: Any
    headers: dict[str, str]
    status: int = 0


@dataclass
class _Failure:
    status: int
    times: int
    model: str | None
    retry_after: float | None
    message: str | None


@dataclass
class _Segment:
    """A piece of the prompt in order: one system block or one content block of a message."""

    role: str
    text: str
    marked: bool = False
    chars: int = field(init=False)

    def __post_init__(self) -> None:
        self.chars = len(self.text)


class _ApiError(Exception):
    """Ends a request with an HTTP error in the provider's JSON shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.error_type = error_type


class _PrefixCache:
    """Remembers prompt prefixes (by rolling hash) to simulate prompt caching."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()
        self._lock = threading.Lock()

    @staticmethod
    def hashes(namespace: str, segments: list[_Segment]) -> list[bytes]:
        digest = hashlib.sha256(namespace.encode()).digest()
        out = []
        for seg in segments:
            h = hashlib.sha256(digest)
            h.update(seg.role.encode())
            h.update(b"\0")
            h.update(seg.text.encode("utf-8", "surrogatepass"))
            digest = h.digest()
            out.append(digest)
        return out

    def lookup_and_store(self, hashes: list[bytes], limit: int, store: Iterable[int]) -> int:
        """Index + 1 of the longest cached prefix ending at or before ``limit``; then store."""
        with self._lock:
            hit = 0
            for i in range(limit, -1, -1):
                if hashes[i] in self._seen:
                    hit = i + 1
                    break
            self._seen.update(hashes[i] for i in store)
        return hit


class FakeModelServer:
    """A local server speaking the Anthropic and OpenAI chat APIs, playing scripted models.

    Args:
        models: model name (as clients send it) → a :class:`ScriptedModel`, a rule function
            ``fn(messages) -> str`` or a fixed reply text.
        api_key: the key clients must send (``x-api-key`` or ``Authorization: Bearer``); a random
            one by default. A request without it gets HTTP 401.

    Example::

        with FakeModelServer({"claude-test": ScriptedModel(["hi"])}) as server:
            client = anthropic.Anthropic(base_url=server.anthropic_base_url,
                                         api_key=server.api_key)
            client.messages.create(model="claude-test", max_tokens=100,
                                   messages=[{"role": "user", "content": "hello"}])

    Usage is estimated as ``ceil(chars / 4)`` tokens. Prompt caching is simulated: on the
    Anthropic API, the prompt up to the last ``cache_control`` marker is cached; the longest
    prefix a previous request cached (at a marker) counts as ``cache_read_input_tokens``, the
    rest of the marked prefix as ``cache_creation_input_tokens`` and the remainder as
    ``input_tokens``. On the OpenAI API every message boundary is cached automatically and the
    longest cached prefix is reported as ``prompt_tokens_details.cached_tokens``. There is no
    minimum cacheable length.
    """

    def __init__(
        self,
        models: Mapping[str, Model] | None = None,
        *,
        api_key: str | None = None,
    ) -> None:
        self.api_key = api_key or f"fake-key-{secrets.token_hex(12)}"
        self.requests: list[RecordedRequest] = []
        self._models: dict[str, Model] = {}
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        self._cache = _PrefixCache()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        for name, model in (models or {}).items():
            self.add_model(name, model)

    # -- configuration -------------------------------------------------------------------------

    def add_model(self, name: str, model: Model) -> None:
        """Serve ``model`` under ``name`` (replacing any model of that name)."""
        if not (isinstance(model, str) or callable(model)):
            raise TypeError(
                f"a model is a ScriptedModel, a callable or a reply string, not {model!r}"
            )
        if isinstance(model, ScriptedModel) and model.name is None:
            model.name = name
        with self._lock:
            self._models[name] = model

    @property
    def models(self) -> dict[str, Model]:
        """The models served, by name (a copy)."""
        with self._lock:
            return dict(self._models)

    def fail(
        self,
        status: int = 529,
        *,
        times: int = 1,
        model: str | None = None,
        retry_after: float | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests (for ``model``, or any) with an HTTP error.

        The body has the provider's error shape; on the Anthropic API 529 is
        ``overloaded_error``, 429 ``rate_limit_error``, 500 ``api_error``, 400
        ``invalid_request_error`` and 401 ``authentication_error``. With ``retry_after`` the
        response carries ``retry-after`` (whole seconds, as the real APIs send it) and the more
        precise ``retry-after-ms``, which the SDKs prefer; a small positive value such as 0.01
        keeps retry tests fast (the SDKs ignore 0 and fall back to their own backoff).
        Failures queue up in the order they are added.
        """
        if times < 1:
            raise ValueError(f"times must be >= 1, not {times!r}")
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (4xx or 5xx), not {status!r}")
        with self._lock:
            self._failures.append(_Failure(status, times, model, retry_after, message))

    def env(self) -> dict[str, str]:
        """Environment variables that point both SDKs at this server with its key."""
        return {
            "ANTHROPIC_BASE_URL": self.anthropic_base_url,
            "ANTHROPIC_API_KEY": self.api_key,
            "OPENAI_BASE_URL": self.openai_base_url,
            "OPENAI_API_KEY": self.api_key,
        }

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """Point both SDKs at this server in ``os.environ`` for the ``with`` block, then restore.

        For code run in this process (the pytest fixture does the same with ``monkeypatch``).
        """
        saved = {name: os.environ.get(name) for name in self.env()}
        os.environ.update(self.env())
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeModelServer:
        """Bind a free port on 127.0.0.1 and serve in a background thread; returns ``self``."""
        if self._httpd is not None:
            raise RuntimeError("the fake model server is already running")
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-model-server:{httpd.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection; safe to call twice."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running server."""
        if self._httpd is None:
            raise RuntimeError("the fake model server is not running; call start() first")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def anthropic_base_url(self) -> str:
        """The value for ``ANTHROPIC_BASE_URL`` (or ``anthropic.Anthropic(base_url=...)``)."""
        return self.url

    @property
    def openai_base_url(self) -> str:
        """The value for ``OPENAI_BASE_URL`` (or ``openai.OpenAI(base_url=...)``)."""
        return f"{self.url}/v1"

    def __repr__(self) -> str:
        where = self.url if self._httpd is not None else "stopped"
        return f"FakeModelServer({where}, models={sorted(self._models)})"

    # -- request handling (called from the handler threads) ------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _take_failure(self, model: str | None) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.model is None or failure.model == model:
                    failure.times -= 1
                    if failure.times == 0:
                        self._failures.remove(failure)
                    return failure
        return None

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        given = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = given or auth[7:].strip()
        return given is not None and secrets.compare_digest(given, self.api_key)

    def _model(self, name: str | None) -> Model:
        with self._lock:
            model = self._models.get(name) if isinstance(name, str) else None
            known = sorted(self._models)
        if model is None:
            raise _ApiError(
                404,
                f"model: {name} (this fake server knows: {', '.join(known) or 'no models'})",
            )
        return model

    def _reply(self, name: str, messages: list[dict]) -> str:
        model = self._model(name)
        if isinstance(model, str):
            return model
        try:
            text = model(messages)
        except ScriptExhausted as exc:
            raise _ApiError(400, str(exc), headers={"x-should-retry": "false"}) from None
        except Exception as exc:
            # Not retried by the SDKs: a failing reply function fails the same way again.
            raise _ApiError(
                500,
                f"model {name!r} raised {type(exc).__name__}: {exc}",
                headers={"x-should-retry": "false"},
            ) from None
        if not isinstance(text, str):
            raise _ApiError(
                500,
                f"model {name!r} returned {type(text).__name__}, not str",
                headers={"x-should-retry": "false"},
            )
        return text

    def _cached_prefix(self, namespace: str, segments: list[_Segment], *, auto: bool) -> int:
        """Characters of the prompt served from the simulated cache (and update the cache)."""
        if not segments:
            return 0
        if auto:
            marks = list(range(len(segments)))
        else:
            marks = [i for i, s in enumerate(segments) if s.marked]
        if not marks:
            return 0
        hashes = self._cache.hashes(namespace, segments)
        hit = self._cache.lookup_and_store(hashes, marks[-1], marks)
        return sum(s.chars for s in segments[:hit])


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # bursts of concurrent connections must not hit SYN retries
    fake: FakeModelServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def track(self, sock: socket.socket, *, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(sock)
            else:
                self._connections.discard(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up on a kept-alive connection is normal, not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        # Keep-alive connections would otherwise hold their threads until the client hangs up.
        with self._connections_lock:
            connections, self._connections = self._connections, set()
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rlm-kernel-fake-model-server"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Streamed events are small writes; without this, Nagle + delayed ACK stalls each one.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.track(self.connection, open_=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests stay quiet; RecordedRequest is the log

    # -- HTTP verbs ----------------------------------------------------------------------------

    def do_GET(self) -> None:
        api: Api = "anthropic" if "anthropic-version" in self.headers else "openai"
        self._send_error(api, _ApiError(404, f"no such endpoint: GET {self.path}"))

    def do_POST(self) -> None:
        fake = self.server.fake
        path = self.path.split("?", 1)[0].rstrip("/")
        raw = self._read_body()
        api = _ROUTES.get(path)
        if api is None:
            api = "anthropic" if "anthropic-version" in self.headers else "openai"
            self._send_error(api, _ApiError(404, f"no such endpoint: POST {self.path}"))
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        model = body.get("model") if isinstance(body, dict) else None
        stream = bool(body.get("stream")) if isinstance(body, dict) else False
        record = RecordedRequest(
            api=api,
            path=path,
            model=model if isinstance(model, str) else None,
            stream=stream,
            body=body,
            headers={k: v for k, v in headers.items() if k not in _CREDENTIAL_HEADERS},
        )
        fake._record(record)
        try:
            if not fake._authorized(headers):
                raise _ApiError(401, _unauthorized_message(api, headers))
            if not isinstance(body, dict):
                raise _ApiError(400, "the request body is not a JSON object")
            failure = fake._take_failure(record.model)
            if failure is not None:
                raise _injected(failure)
            if api == "anthropic":
                self._anthropic(fake, body, record)
            else:
                self._openai(fake, body, record)
        except _ApiError as err:
            record.status = err.status
            self._send_error(api, err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _read_body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    # -- the two APIs --------------------------------------------------------------------------

    def _anthropic(self, fake: FakeModelServer, body: dict, record: RecordedRequest) -> None:
        name = body.get("model")
        if not isinstance(name, str):
            raise _ApiError(400, "model: Field required")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise _ApiError(400, "max_tokens: Field required (a positive integer)")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _ApiError(400, "messages: at least one message is required")
        segments, convo = _anthropic_prompt(body)
        text = fake._reply(name, convo)
        text, stop_reason = _truncate(text, max_tokens, "end_turn", "max_tokens")

        total_chars = sum(s.chars for s in segments)
        marked = [i for i, s in enumerate(segments) if s.marked]
        read_chars = fake._cached_prefix(f"anthropic\0{name}", segments, auto=False)
        marked_chars = sum(s.chars for s in segments[: marked[-1] + 1]) if marked else 0
        cache_read = estimate_tokens(read_chars)
        cache_write = max(0, estimate_tokens(marked_chars) - cache_read)
        usage = {
            "input_tokens": max(0, estimate_tokens(total_chars) - cache_read - cache_write),
            "cache_creation_input_tokens": cache_write,
            "cache_read_input_tokens": cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": cache_write,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": estimate_tokens(len(text)),
            "service_tier": "standard",
        }
        message = {
            "id": f"msg_{secrets.token_hex(12)}",
            "type": "message",
            "role": "assistant",
            "model": name,
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        request_id = f"req_{secrets.token_hex(12)}"
        record.status = 200  # before the reply: a client may look as soon as it has it
        if body.get("stream"):
            self._send_sse(_anthropic_events(message), {"request-id": request_id})
        else:
            self._send_json(200, message, {"request-id": request_id})

    def _openai(self, fake: FakeModelServer, body: dict, record: RecordedRequest) -> None:
        name = body.get("model")
        if not isinstance(name, str):
            raise _ApiError(400, "you must provide a model parameter")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _ApiError(400, "'messages' must be a non-empty array")
        segments, convo = _openai_prompt(messages)
        text = fake._reply(name, convo)
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        text, finish = _truncate(text, cap if isinstance(cap, int) else None, "stop", "length")

        prompt = estimate_tokens(sum(s.chars for s in segments))
        cached_chars = fake._cached_prefix(f"openai\0{name}", segments, auto=True)
        cached = min(prompt, estimate_tokens(cached_chars))
        completion = estimate_tokens(len(text))
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        head = {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "created": int(time.time()),
            "model": name,
            "system_fingerprint": None,
        }
        request_id = f"req_{secrets.token_hex(12)}"
        record.status = 200
        if not body.get("stream"):
            completion_obj = {
                **head,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": text,
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
                "service_tier": "default",
            }
            self._send_json(200, completion_obj, {"x-request-id": request_id})
            return
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        chunks = _openai_chunks(head, text, finish, usage if include_usage else None)
        self._send_sse(chunks, {"x-request-id": request_id})

    # -- writing responses ---------------------------------------------------------------------

    def _send_json(self, status: int, obj: object, headers: Mapping[str, str]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_sse(self, events: Iterator[bytes], headers: Mapping[str, str]) -> None:
        # Chunked transfer keeps the connection alive after the stream, like the real services.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        for event in events:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        self.wfile.write(b"0\r\n\r\n")

    def _send_error(self, api: Api, err: _ApiError) -> None:
        request_id = f"req_{secrets.token_hex(12)}"
        if api == "anthropic":
            error_type = err.error_type or _ANTHROPIC_ERROR_TYPES.get(err.status, "api_error")
            body: dict = {
                "type": "error",
                "error": {"type": error_type, "message": err.message},
                "request_id": request_id,
            }
            headers = {"request-id": request_id, **err.headers}
        else:
            default = "server_error" if err.status >= 500 else "invalid_request_error"
            error_type, code = _OPENAI_ERROR_TYPES.get(err.status, (default, None))
            body = {
                "error": {
                    "message": err.message,
                    "type": err.error_type or error_type,
                    "param": None,
                    "code": code,
                }
            }
            headers = {"x-request-id": request_id, **err.headers}
        try:
            self._send_json(err.status, body, headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


# -- prompt parsing ----------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    """The text of a message content: a string, or the text blocks of a block list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    return "" if content is None else str(content)


def _block_segment(role: str, block: Any) -> _Segment:
    if isinstance(block, dict) and block.get("type") == "text":
        text = str(block.get("text", ""))
    else:
        # Images, tool results and the like count by the size of their JSON.
        text = json.dumps(block, sort_keys=True)
    marked = isinstance(block, dict) and bool(block.get("cache_control"))
    return _Segment(role, text, marked)


def _anthropic_prompt(body: dict) -> tuple[list[_Segment], list[dict]]:
    """The prompt as ordered segments (for usage and caching) and as plain messages."""
    segments: list[_Segment] = []
    convo: list[dict] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        segments.append(_Segment("system", system))
    elif isinstance(system, list):
        segments.extend(_block_segment("system", b) for b in system)
    if system:
        convo.append({"role": "system", "content": _text_of(system)})
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            raise _ApiError(400, "messages: each message is an object with role and content")
        role = str(message.get("role"))
        content = message.get("content")
        if isinstance(content, list):
            segments.extend(_block_segment(role, b) for b in content)
        else:
            segments.append(_Segment(role, _text_of(content)))
        convo.append({"role": role, "content": _text_of(content)})
    if body.get("cache_control") and segments:
        # Request-level cache_control caches up to the last block, like automatic caching.
        segments[-1].marked = True
    return segments, convo


def _openai_prompt(messages: list) -> tuple[list[_Segment], list[dict]]:
    segments: list[_Segment] = []
    convo: list[dict] = []
    for message in messages:
        if not isinstance(message, dict):
            raise _ApiError(400, "each message must be an object with role and content")
        role = str(message.get("role"))
        role = "system" if role == "developer" else role
        text = _text_of(message.get("content"))
        segments.append(_Segment(role, text))
        convo.append({"role": role, "content": text})
    return segments, convo


def _truncate(text: str, max_tokens: int | None, done: str, cut: str) -> tuple[str, str]:
    if max_tokens is not None and estimate_tokens(len(text)) > max_tokens:
        return text[: max_tokens * 4], cut
    return text, done


def _pieces(text: str) -> list[str]:
    size = max(1, math.ceil(len(text) / _STREAM_PIECES))
    return [text[i : i + size] for i in range(0, len(text), size)]


# -- streaming ---------------------------------------------------------------------------------


def _sse(event: str | None, data: object) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def _anthropic_events(message: dict) -> Iterator[bytes]:
    """The SSE events of a streamed Messages API reply, in the order the real API sends them."""
    usage = message["usage"]
    start_usage = {**usage, "output_tokens": min(1, usage["output_tokens"])}
    yield _sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                **message,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": start_usage,
            },
        },
    )
    yield _sse(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    yield _sse("ping", {"type": "ping"})
    for piece in _pieces(message["content"][0]["text"]):
        yield _sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            },
        )
    yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    yield _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {
                "input_tokens": usage["input_tokens"],
                "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
                "cache_read_input_tokens": usage["cache_read_input_tokens"],
                "output_tokens": usage["output_tokens"],
            },
        },
    )
    yield _sse("message_stop", {"type": "message_stop"})


def _openai_chunks(head: dict, text: str, finish: str, usage: dict | None) -> Iterator[bytes]:
    """The SSE chunks of a streamed Chat Completions reply, ending with ``[DONE]``."""
    base = {**head, "object": "chat.completion.chunk"}
    if usage is not None:
        base["usage"] = None

    def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse(None, {**base, "choices": [choice]})

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for piece in _pieces(text):
        yield chunk({"content": piece})
    yield chunk({}, finish)
    if usage is not None:
        yield _sse(None, {**base, "choices": [], "usage": usage})
    yield _sse(None, "[DONE]")


# -- errors ------------------------------------------------------------------------------------


def _unauthorized_message(api: Api, headers: Mapping[str, str]) -> str:
    # Never echo the key that was sent: error messages end up in logs and notebooks.
    sent = "x-api-key" in headers or "authorization" in headers
    if api == "anthropic":
        return "invalid x-api-key" if sent else "x-api-key header is required"
    if sent:
        return "Incorrect API key provided. This fake server expects the key it was created with."
    return "You didn't provide an API key."


def _injected(failure: _Failure) -> _ApiError:
    headers: dict[str, str] = {}
    if failure.retry_after is not None:
        headers["retry-after"] = str(math.ceil(failure.retry_after))
        headers["retry-after-ms"] = f"{failure.retry_after * 1000:g}"
    try:
        phrase = HTTPStatus(failure.status).phrase
    except ValueError:
        phrase = "Error"
    default = _DEFAULT_MESSAGES.get(failure.status, phrase)
    return _ApiError(failure.status, failure.message or default, headers=headers)
