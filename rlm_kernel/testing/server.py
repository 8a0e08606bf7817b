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
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, get_args

from ._wire import (
    ANTHROPIC_ERROR_TYPES,
    DEFAULT_MESSAGES,
    OPENAI_ERROR_TYPES,
    Api,
    ApiError,
    Segment,
    anthropic_events,
    anthropic_prompt,
    estimate_tokens,
    openai_chunks,
    openai_prompt,
    truncate,
    unauthorized_message,
)
from .scripted import ScriptedModel, ScriptExhausted

Model = ScriptedModel | Callable[[list[dict]], str] | str
"""A model the server can play: a :class:`ScriptedModel`, a rule ``fn(messages) -> str`` that
answers any number of calls, or a fixed reply text."""

Fault = Literal["reset", "hang", "malformed", "cut", "empty", "no_finish", "no_usage"]
"""A way to break a reply other than an HTTP error status; see :meth:`FakeModelServer.fault`."""

_ROUTES: dict[str, Api] = {"/v1/messages": "anthropic", "/v1/chat/completions": "openai"}
_CREDENTIAL_HEADERS = frozenset(
    {"authorization", "x-api-key", "api-key", "proxy-authorization", "cookie"}
)


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
    """One queued failure: an HTTP error ``status``, or a ``fault`` of the reply itself."""

    times: int
    model: str | None
    status: int = 0
    retry_after: float | None = None
    message: str | None = None
    fault: Fault | None = None
    stream: bool | None = None
    api: Api | None = None
    seconds: float | None = None

    def matches(self, model: str | None, stream: bool, api: Api) -> bool:
        return (
            (self.model is None or self.model == model)
            and (self.stream is None or self.stream == stream)
            and (self.api is None or self.api == api)
        )


class _PrefixCache:
    """Remembers prompt prefixes (by rolling hash) to simulate prompt caching."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()
        self._lock = threading.Lock()

    @staticmethod
    def hashes(namespace: str, segments: list[Segment]) -> list[bytes]:
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
        self._stopping = threading.Event()  # wakes requests held by a "hang" fault
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
            self._failures.append(
                _Failure(times, model, status=status, retry_after=retry_after, message=message)
            )

    def fault(
        self,
        kind: Fault,
        *,
        times: int = 1,
        model: str | None = None,
        stream: bool | None = None,
        api: Api | None = None,
        seconds: float | None = None,
    ) -> None:
        """Break the next ``times`` matching requests in the way ``kind`` names.

        A request matches when its model is ``model``, its ``stream`` flag is ``stream`` and its
        API is ``api`` (each ``None`` matches any). The kinds:

        - ``"reset"``: the connection is reset (TCP RST) before any reply;
        - ``"hang"``: no reply for ``seconds`` (default: until the server stops), then the
          connection closes; for client timeouts;
        - ``"malformed"``: a 200 whose JSON body is cut short, or a stream with an event that is
          not JSON in the middle;
        - ``"cut"``: the connection closes half-way through the body or the stream;
        - ``"empty"``: a 200 with no reply: a stream with no events (what some local servers
          send for a prompt larger than their window), or a body with no content and no stop
          reason;
        - ``"no_finish"``: the reply's text without a stop reason (a stream without its final
          events);
        - ``"no_usage"``: no token usage in the reply, as some OpenAI-compatible servers do in
          streams (OpenAI API only).

        Faults and :meth:`fail` errors share one queue, taken in the order they were added.
        """
        if kind not in get_args(Fault):
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(get_args(Fault))}")
        if times < 1:
            raise ValueError(f"times must be >= 1, not {times!r}")
        if kind == "no_usage":
            if api == "anthropic":
                raise ValueError("the no_usage fault applies to the OpenAI API only")
            api = "openai"
        with self._lock:
            self._failures.append(
                _Failure(times, model, fault=kind, stream=stream, api=api, seconds=seconds)
            )

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
        self._stopping.clear()
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
        self._stopping.set()
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

    def _take_failure(self, model: str | None, stream: bool, api: Api) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.matches(model, stream, api):
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
            raise ApiError(
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
            raise ApiError(400, str(exc), headers={"x-should-retry": "false"}) from None
        except Exception as exc:
            # Not retried by the SDKs: a failing reply function fails the same way again.
            raise ApiError(
                500,
                f"model {name!r} raised {type(exc).__name__}: {exc}",
                headers={"x-should-retry": "false"},
            ) from None
        if not isinstance(text, str):
            raise ApiError(
                500,
                f"model {name!r} returned {type(text).__name__}, not str",
                headers={"x-should-retry": "false"},
            )
        return text

    def _cached_prefix(self, namespace: str, segments: list[Segment], *, auto: bool) -> int:
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
    _fault: Fault | None = None  # how the reply to the current request is broken, if at all
    _api: Api = "openai"

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
        self._send_error(api, ApiError(404, f"no such endpoint: GET {self.path}"))

    def do_POST(self) -> None:
        fake = self.server.fake
        path = self.path.split("?", 1)[0].rstrip("/")
        raw = self._read_body()
        api = _ROUTES.get(path)
        if api is None:
            api = "anthropic" if "anthropic-version" in self.headers else "openai"
            self._send_error(api, ApiError(404, f"no such endpoint: POST {self.path}"))
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
                raise ApiError(401, unauthorized_message(api, headers))
            if not isinstance(body, dict):
                raise ApiError(400, "the request body is not a JSON object")
            self._api = api
            failure = fake._take_failure(record.model, stream, api)
            self._fault = failure.fault if failure is not None else None
            if failure is not None and failure.fault is None:
                raise _injected(failure)
            if self._fault == "reset":
                self._reset()
                return
            if self._fault == "hang":
                fake._stopping.wait(failure.seconds if failure is not None else None)
                self._drop()
                return
            if api == "anthropic":
                self._anthropic(fake, body, record)
            else:
                self._openai(fake, body, record)
        except ApiError as err:
            record.status = err.status
            self._send_error(api, err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._drop()

    def _drop(self) -> None:
        """Close the connection now, whatever was (not) sent."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        self.server.track(self.connection, open_=False)
        with contextlib.suppress(OSError):
            self.connection.close()

    def _read_body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    # -- the two APIs --------------------------------------------------------------------------

    def _anthropic(self, fake: FakeModelServer, body: dict, record: RecordedRequest) -> None:
        name = body.get("model")
        if not isinstance(name, str):
            raise ApiError(400, "model: Field required")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ApiError(400, "max_tokens: Field required (a positive integer)")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages: at least one message is required")
        segments, convo = anthropic_prompt(body)
        text = fake._reply(name, convo)
        text, stop_reason = truncate(text, max_tokens, "end_turn", "max_tokens")
        if self._fault == "empty":
            text = ""
        if self._fault in ("empty", "no_finish"):
            stop_reason = None

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
            "content": [{"type": "text", "text": text}] if self._fault != "empty" else [],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        request_id = f"req_{secrets.token_hex(12)}"
        record.status = 200  # before the reply: a client may look as soon as it has it
        if body.get("stream"):
            events = [] if self._fault == "empty" else list(anthropic_events(message))
            if self._fault == "no_finish":
                events = events[:-2]  # without message_delta (the stop reason) and message_stop
            self._send_sse(events, {"request-id": request_id})
        else:
            self._send_json(200, message, {"request-id": request_id})

    def _openai(self, fake: FakeModelServer, body: dict, record: RecordedRequest) -> None:
        name = body.get("model")
        if not isinstance(name, str):
            raise ApiError(400, "you must provide a model parameter")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty array")
        segments, convo = openai_prompt(messages)
        text = fake._reply(name, convo)
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        text, finish = truncate(text, cap if isinstance(cap, int) else None, "stop", "length")
        if self._fault == "empty":
            text = ""
        no_finish = self._fault in ("empty", "no_finish")

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
                        "finish_reason": None if no_finish else finish,
                    }
                ]
                if self._fault != "empty"
                else [],
                "usage": usage if self._fault != "no_usage" else None,
                "service_tier": "default",
            }
            self._send_json(200, completion_obj, {"x-request-id": request_id})
            return
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        if self._fault == "no_usage":
            include_usage = False
        if self._fault == "empty":
            chunks: list[bytes] = []
        else:
            chunks = list(
                openai_chunks(
                    head, text, None if no_finish else finish, usage if include_usage else None
                )
            )
        self._send_sse(chunks, {"x-request-id": request_id})

    # -- writing responses ---------------------------------------------------------------------

    def _send_json(self, status: int, obj: object, headers: Mapping[str, str]) -> None:
        data = json.dumps(obj).encode()
        fault = self._fault if status == 200 else None
        if fault == "malformed":
            data = data[: len(data) // 2]  # a complete HTTP body that is not JSON
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if fault == "cut":
            self.wfile.write(data[: len(data) // 2])
            self._drop()
            return
        self.wfile.write(data)

    def _send_sse(self, events: list[bytes], headers: Mapping[str, str]) -> None:
        # Chunked transfer keeps the connection alive after the stream, like the real services.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        half = len(events) // 2
        if self._fault == "malformed":
            events = [
                *events[:half],
                # Named like the events around it, so that the SDK reads it, as JSON.
                (b"event: content_block_delta\n" if self._api == "anthropic" else b"")
                + b'data: {"type": "content_block_delta", "ind\n\n',
                *events[half:],
            ]
        for n, event in enumerate(events):
            if self._fault == "cut" and n == half:
                self._drop()  # mid-stream, without the chunked body's last chunk
                return
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        self.wfile.write(b"0\r\n\r\n")

    def _send_error(self, api: Api, err: ApiError) -> None:
        request_id = f"req_{secrets.token_hex(12)}"
        if api == "anthropic":
            error_type = err.error_type or ANTHROPIC_ERROR_TYPES.get(err.status, "api_error")
            body: dict = {
                "type": "error",
                "error": {"type": error_type, "message": err.message},
                "request_id": request_id,
            }
            headers = {"request-id": request_id, **err.headers}
        else:
            default = "server_error" if err.status >= 500 else "invalid_request_error"
            error_type, code = OPENAI_ERROR_TYPES.get(err.status, (default, None))
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


def _injected(failure: _Failure) -> ApiError:
    headers: dict[str, str] = {}
    if failure.retry_after is not None:
        headers["retry-after"] = str(math.ceil(failure.retry_after))
        headers["retry-after-ms"] = f"{failure.retry_after * 1000:g}"
    try:
        phrase = HTTPStatus(failure.status).phrase
    except ValueError:
        phrase = "Error"
    default = DEFAULT_MESSAGES.get(failure.status, phrase)
    return ApiError(failure.status, failure.message or default, headers=headers)
