"""The fake model server's HTTP side: one handler thread per connection, each API's wire."""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from ._requests import CREDENTIAL_HEADERS, Failure, Fault, RecordedRequest
from ._wire import (
    ANTHROPIC_ERROR_TYPES,
    DEFAULT_MESSAGES,
    OPENAI_ERROR_TYPES,
    Api,
    ApiError,
    anthropic_events,
    anthropic_prompt,
    estimate_tokens,
    openai_chunks,
    openai_prompt,
    truncate,
    unauthorized_message,
)

if TYPE_CHECKING:
    from .server import FakeModelServer

_ROUTES: dict[str, Api] = {"/v1/messages": "anthropic", "/v1/chat/completions": "openai"}


class HTTPServer(ThreadingHTTPServer):
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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rlm-kernel-fake-model-server"
    server: HTTPServer
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
            headers={k: v for k, v in headers.items() if k not in CREDENTIAL_HEADERS},
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


def _injected(failure: Failure) -> ApiError:
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
