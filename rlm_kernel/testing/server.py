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
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import get_args

from ._http import Handler, HTTPServer
from ._requests import Failure, Fault, RecordedRequest
from ._wire import (
    Api,
    ApiError,
    Segment,
)
from .scripted import ScriptedModel, ScriptExhausted

Model = ScriptedModel | Callable[[list[dict]], str] | str
"""A model the server can play: a :class:`ScriptedModel`, a rule ``fn(messages) -> str`` that
answers any number of calls, or a fixed reply text."""


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
        self._failures: list[Failure] = []
        self._lock = threading.Lock()
        self._cache = _PrefixCache()
        self._httpd: HTTPServer | None = None
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
                Failure(times, model, status=status, retry_after=retry_after, message=message)
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
                Failure(times, model, fault=kind, stream=stream, api=api, seconds=seconds)
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
        httpd = HTTPServer(("127.0.0.1", 0), Handler)
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

    def _take_failure(self, model: str | None, stream: bool, api: Api) -> Failure | None:
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
