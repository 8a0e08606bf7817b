"""What the providers built on the official ``anthropic`` and ``openai`` SDKs have in common.

Both SDKs come from one code generator: their exceptions have the same names and attributes
(``APIStatusError``, ``APIConnectionError``, ``APITimeoutError``), they send the same
``x-stainless-retry-count`` header, and both run over an httpx-style transport. Only what is
specific to one SDK (request parameters, reply parsing, usage, error bodies) stays in its module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from ..errors import ModelError
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
    exc: Any,
    sdk: ModuleType,
    *,
    error_fields: ErrorFields,
    secrets: Iterable[str | None],
) -> ModelError:
    """The :class:`ModelError` for an HTTP status or connection error raised by ``sdk``.

    Args:
        name: the provider's model name, e.g. ``"openai:gpt-5-mini"``.
        exc: an ``APIStatusError`` or ``APIConnectionError`` (timeouts included) of ``sdk``.
        sdk: the SDK module that raised it, ``anthropic`` or ``openai``.
        error_fields: how this SDK's error bodies name the kind of error and its detail.
        secrets: credentials to keep out of the message.
    """
    retries = retries_of(exc.request)
    if isinstance(exc, sdk.APIStatusError):
        kind, detail = error_fields(exc.body)
        label = f"HTTP {exc.status_code}" + (f" {kind}" if kind else "")
        message = f"{label}: {detail or exc.response.reason_phrase}"
    elif isinstance(exc, sdk.APITimeoutError):
        message = "the request timed out"
    else:
        url = exc.request.url
        message = f"could not connect to {url.scheme}://{url.netloc.decode()}"
    if retries:
        message += f" (after {retries} {'retry' if retries == 1 else 'retries'})"
    # A server may quote the key it rejected; it must never reach logs or notebooks.
    return ModelError(name, scrub(message, secrets), retries=retries)


def completion(
    provider: str,
    model: str,
    *,
    text: str,
    usage: Usage,
    latency_s: float,
    request: Any,
    stop_reason: str | None,
) -> Completion:
    """The :class:`Completion` of a reply from ``provider:model``, priced, with its retries."""
    return Completion(
        text=text,
        model=f"{provider}:{model}",
        usage=usage,
        latency_s=latency_s,
        cost_usd=pricing.cost(provider, model, usage),
        retries=retries_of(request),
        stop_reason=stop_reason,
    )
