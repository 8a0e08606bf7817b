"""What the providers built on the official ``anthropic`` and ``openai`` SDKs have in common.

Both SDKs come from one code generator: their exceptions have the same names and attributes
(``APIStatusError``, ``APIConnectionError``, ``APITimeoutError``), they send the same
``x-stainless-retry-count`` header, and both run over an httpx-style transport. Only what is
specific to one SDK (request parameters, reply parsing, usage, error bodies) stays in its module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from types import ModuleType
from typing import Any

from ..errors import ModelError, ModelRefused
from ..types import Completion, Usage
from . import pricing

CONNECT_TIMEOUT = 10.0  # a host that does not answer fails fast; replies may take minutes

ErrorFields = Callable[[object], tuple[str | None, str | None]]
"""Reads an error body as ``(kind, detail)``, each ``None`` when the body does not say."""


def retries_of(request: Any) -> int:
    """Retries behind an HTTP attempt: the SDK numbers each attempt in a request header."""
    try:
        return int(request.headers.get("x-stainless-retry-count", 0))
    except (AttributeError, TypeError, ValueError):
        return 0


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every non-empty secret replaced by ``<api key>``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<api key>")
    return text


def model_error(
    name: str,
    exc: BaseException,
    sdk: ModuleType,
    *,
    error_fields: ErrorFields,
    secrets: Iterable[str | None],
    base_url: object = None,
) -> ModelError | None:
    """The :class:`ModelError` for any failure of a call through ``sdk``, in one line.

    HTTP errors, timeouts, connections refused or lost (before or during a streamed reply),
    replies that are not JSON and the SDK's own errors all become a ``ModelError`` that says
    which of these happened. Returns ``None`` for anything else (a bug, not a failed call),
    which the caller lets propagate.

    Args:
        name: the provider's model name, e.g. ``"openai:gpt-5-mini"``.
        exc: what the call raised.
        sdk: the SDK module that made the call, ``anthropic`` or ``openai``.
        error_fields: how this SDK's error bodies name the kind of error and its detail.
        secrets: credentials to keep out of the message.
        base_url: the endpoint, named when the exception does not carry its request.
    """
    retries = retries_of(getattr(exc, "request", None)) if isinstance(exc, sdk.APIError) else 0
    transient = False
    if isinstance(exc, sdk.APIStatusError):
        kind, detail = error_fields(exc.body)
        label = f"HTTP {exc.status_code}" + (f" {kind}" if kind else "")
        message = f"{label}: {detail or exc.response.reason_phrase}"
    elif isinstance(exc, sdk.APITimeoutError):
        message = "the request timed out"
    elif isinstance(exc, sdk.APIConnectionError) or _transport_error(exc) is not None:
        message = _connection_message(exc, base_url)
        transient = _lost_mid_reply(exc)
    elif isinstance(exc, ValueError):
        # json.JSONDecodeError from a body or a stream event, or a reply of the wrong shape.
        message = f"the server's reply is not valid ({type(exc).__name__}: {_first_line(exc)})"
        transient = True
    elif isinstance(exc, sdk.APIError) or type(exc).__name__ in _SDK_BASE_ERRORS:
        message = f"the SDK failed: {_first_line(exc)}"
    else:
        return None
    if retries:
        message += f" (after {retries} {'retry' if retries == 1 else 'retries'})"
    # A server may quote the key it rejected; it must never reach logs or notebooks.
    status = exc.status_code if isinstance(exc, sdk.APIStatusError) else None
    cls = ModelRefused if status in ModelRefused.STATUSES else ModelError
    return cls(name, scrub(message, secrets), retries=retries, status=status, transient=transient)


_SDK_BASE_ERRORS = frozenset({"AnthropicError", "OpenAIError"})
# httpx's errors (the SDKs use httpx or its successor httpx2): never imported, recognised by name.
_HTTPX_MODULES = frozenset({"httpx", "httpx2"})
_NOT_CONNECTED = frozenset({"ConnectError", "ConnectTimeout", "UnsupportedProtocol"})


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _transport_error(exc: BaseException) -> BaseException | None:
    """The httpx error behind ``exc`` (itself, or what it was raised from), if any."""
    for link in _chain(exc):
        if any(
            cls.__module__.partition(".")[0] in _HTTPX_MODULES and cls.__name__ == "TransportError"
            for cls in type(link).__mro__
        ):
            return link
    return None


def _lost_mid_reply(exc: BaseException) -> bool:
    """Whether a connection was made and then lost (not a server that could not be reached)."""
    cause = _transport_error(exc)
    return cause is not None and type(cause).__name__ not in _NOT_CONNECTED


def _connection_message(exc: BaseException, base_url: object) -> str:
    """Tell a server that could not be reached from a connection lost during the reply."""
    cause = _transport_error(exc)
    where = _endpoint(exc, base_url)
    if cause is None or type(cause).__name__ in _NOT_CONNECTED:
        return f"could not connect to {where}"
    detail = _first_line(cause)
    return f"the connection to {where} was lost before the reply was complete" + (
        f" ({detail})" if detail else ""
    )


def _endpoint(exc: BaseException, base_url: object) -> str:
    for link in _chain(exc):
        try:
            url = link.request.url  # type: ignore[attr-defined]
        except (AttributeError, RuntimeError):  # httpx raises RuntimeError when unset
            continue
        if url is not None:
            netloc = url.netloc.decode() if isinstance(url.netloc, bytes) else url.netloc
            return f"{url.scheme}://{netloc}"
    return str(base_url).rstrip("/") if base_url else "the server"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


async def server_events(response: Any, sdk: ModuleType) -> AsyncIterator[tuple[str | None, str]]:
    """The server-sent events of a streamed reply, as ``(event, data)``, from its HTTP response.

    Transport failures become the SDK's ``APITimeoutError`` and ``APIConnectionError`` (raised
    from the transport's error), as the SDK's own stream iterators raise them.
    """
    event: str | None = None
    data: list[str] = []
    try:
        async for line in response.aiter_lines():
            if not line:  # a blank line ends an event
                if data:
                    yield event, "\n".join(data)
                event, data = None, []
            elif not line.startswith(":"):  # a line starting with ':' is a comment
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "data":
                    data.append(value)
                elif field == "event":
                    event = value
    except Exception as exc:
        cause = _transport_error(exc)
        if cause is None:
            raise
        if any(cls.__name__ == "TimeoutException" for cls in type(cause).__mro__):
            raise sdk.APITimeoutError(request=response.request) from exc
        raise sdk.APIConnectionError(request=response.request) from exc
    if data:
        yield event, "\n".join(data)


def no_reply(name: str, *, streamed: bool) -> ModelError:
    """The error for a reply with no content and no stop reason, such as an empty stream."""
    what = "the stream ended without any event" if streamed else "the reply has no content"
    return ModelError(
        name,
        f"{what}: the prompt is probably larger than the server's context window "
        "(or the server failed while generating)",
        transient=True,
    )


def no_stop_reason(name: str) -> ModelError:
    """The error for a streamed reply that ended without saying why it stopped."""
    return ModelError(
        name,
        "the stream ended without a stop reason, so the reply may be incomplete: the server "
        "probably stopped generating (context window full, or it failed mid-reply)",
        transient=True,
    )


def completion(
    provider: str,
    model: str,
    *,
    text: str,
    usage: Usage,
    latency_s: float,
    request: Any,
    stop_reason: str | None,
    official: bool,
) -> Completion:
    """The :class:`Completion` of a reply from ``provider:model``, priced, with its retries.

    ``official`` says whether the reply came from the provider's official endpoint, where its
    published prices apply; elsewhere only prices the user gave do (see ``pricing``).
    """
    return Completion(
        text=text,
        model=f"{provider}:{model}",
        usage=usage,
        latency_s=latency_s,
        cost_usd=pricing.cost(provider, model, usage, official=official),
        retries=retries_of(request),
        stop_reason=stop_reason,
    )
