"""OpenAI and OpenAI-compatible chat models through the official ``openai`` SDK.

``openai:<model id>`` talks to ``OPENAI_BASE_URL`` (the OpenAI API by default), so any server
that speaks the Chat Completions API works: vLLM, llama.cpp, Ollama and others.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import MissingAPIKeyError, ModelError, UsageError
from ..types import Completion, Message, Usage
from . import _sdk, pricing, wants_stream

try:
    import openai
except ImportError:  # the SDK is an optional extra
    openai = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import openai as openai_types

_OFFICIAL_HOST = "api.openai.com"
_KEY_HINT = "any non-empty value works for local servers such as vLLM, llama.cpp or Ollama"


class OpenAILLM:
    """A chat model behind the :class:`~rlm_kernel.llm.LLM` protocol, via the ``openai`` SDK.

    The endpoint and key come from the SDK's own sources (``OPENAI_BASE_URL``,
    ``OPENAI_API_KEY``) and are checked here, before any run starts. The SDK retries 408, 409,
    429 and 5xx responses with backoff. Cached prompt tokens reported by the server count as
    cache reads.

    Args:
        model: the model id, e.g. ``"gpt-5-mini"`` or whatever a local server serves.
        stream: stream replies; ``None`` (the default) streams replies that may be longer than
            ``STREAM_ABOVE_TOKENS``.
        max_retries: retries the SDK makes after a failed attempt.
        timeout: seconds for one HTTP attempt.
        cache: accepted for symmetry with :class:`~rlm_kernel.llm.anthropic.AnthropicLLM`;
            OpenAI-style servers cache prompt prefixes on their own.
        client: an ``openai.AsyncOpenAI`` to use instead of building one.

    Raises:
        UsageError: the ``openai`` package is not installed.
        MissingAPIKeyError: no key was found.
    """

    def __init__(
        self,
        model: str,
        *,
        stream: bool | None = None,
        max_retries: int = 2,
        timeout: float = 600.0,
        cache: bool = True,
        client: openai_types.AsyncOpenAI | None = None,
    ) -> None:
        if openai is None:
            raise UsageError(
                "the openai provider needs the openai package: pip install 'rlm-kernel[openai]'"
            )
        self.model = model
        self.name = f"openai:{model}"
        self.stream = stream
        self.cache = cache
        if client is None:
            client = _make_client(max_retries=max_retries, timeout=timeout)
        self._client = client
        # The OpenAI API wants max_completion_tokens (reasoning models reject max_tokens), while
        # many compatible servers only know the older max_tokens.
        # Published prices apply only to the official endpoint, not to local look-alikes.
        self.official = client.base_url.host == _OFFICIAL_HOST
        pricing.user_prices()  # a broken prices file fails here, before any run starts
        self._max_tokens_param = "max_completion_tokens" if self.official else "max_tokens"
        self._stream_usage: bool | None = None  # whether streamed replies carry usage

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> Completion:
        """Send the conversation and return the reply with its usage, cost and retry count.

        ``temperature`` and ``seed`` are sent when given. A reply whose server reports no
        usage has :meth:`Usage.unknown <rlm_kernel.types.Usage.unknown>` usage and no cost.

        Raises:
            ModelError: the call failed after the SDK's retries (HTTP error, timeout, no
                connection, a connection lost mid-reply, a reply that is not valid), or the
                server sent no reply or a stream without a finish reason.
        """
        params: dict[str, Any] = {
            "model": self.model,
            # The SDK walks each message of `messages=` through its typed-dict transform (about
            # 0.2 ms a message, most of a step's host time in a long run) to send it unchanged,
            # since plain role/content strings have nothing to rename or encode. The body's
            # `messages` comes from `extra_body`, which the SDK sends as given and which takes
            # precedence over the (empty) argument.
            "messages": [],
            "extra_body": {"messages": [dict(m) for m in messages]},
            self._max_tokens_param: max_tokens,
        }
        if temperature is not None:
            params["temperature"] = temperature
        if seed is not None:
            params["seed"] = seed
        # A server that sends no usage in streams (llama.cpp, for one) is asked without
        # streaming from then on, where it does report usage, unless streaming was asked for.
        streamed = wants_stream(self.stream, max_tokens) and (
            self.stream is True or self._stream_usage is not False
        )
        start = time.perf_counter()
        try:
            if streamed:
                text, finish, raw_usage, request = await self._streamed(params)
            else:
                raw = await self._client.chat.completions.with_raw_response.create(**params)
                request = raw.http_request
                # Three fields of the JSON body, read as JSON: building the SDK's models of the
                # whole reply would cost more than the rest of the call on a local server.
                choice, raw_usage = _first_choice(raw.http_response.json())
                if choice is None:
                    raise _sdk.no_reply(self.name, streamed=False)
                message = choice.get("message")
                text = (message.get("content") if isinstance(message, dict) else None) or ""
                finish = choice.get("finish_reason")
        except ModelError:
            raise
        except Exception as exc:
            error = _sdk.model_error(
                self.name,
                exc,
                openai,
                error_fields=_error_fields,
                secrets=(self._client.api_key,),
                base_url=self._client.base_url,
            )
            if error is None:
                raise
            raise error from exc
        latency = time.perf_counter() - start

        return _sdk.completion(
            "openai",
            self.model,
            text=text,
            usage=_usage(raw_usage),
            latency_s=latency,
            request=request,
            stop_reason=finish,
            official=self.official,
        )

    async def _streamed(self, params: dict[str, Any]) -> tuple[str, str | None, Any, Any]:
        """Stream a reply; an empty stream, or one without a finish reason, is an error.

        The SDK sends the request and deals with its HTTP errors and retries; the events are
        read here as JSON, since building the SDK's model of each chunk costs about 75 µs of
        host CPU a token (over a second for a long root reply).
        """
        raw = await self._client.chat.completions.with_raw_response.create(
            **params, stream=True, stream_options={"include_usage": True}
        )
        response = raw.http_response
        parts: list[str] = []
        finish: str | None = None
        raw_usage = None
        chunks = 0
        done = False
        try:
            async for _event, data in _sdk.server_events(response, openai):
                # Read on past [DONE] to the end of the body, so the connection can be reused.
                done = done or data.startswith("[DONE]")
                if done:
                    continue
                chunk = json.loads(data)
                if not isinstance(chunk, dict):
                    raise ValueError(f"a stream event is a JSON {type(chunk).__name__}")
                if chunk.get("error"):
                    raise _stream_error(chunk["error"], response.request)
                chunks += 1
                for choice in chunk.get("choices") or ():
                    if isinstance(choice, dict) and choice.get("index", 0) == 0:
                        delta = choice.get("delta")
                        if isinstance(delta, dict):
                            parts.append(delta.get("content") or "")
                        finish = choice.get("finish_reason") or finish
                if isinstance(chunk.get("usage"), dict):
                    raw_usage = chunk["usage"]
        finally:
            await response.aclose()
        if chunks == 0:
            raise _sdk.no_reply(self.name, streamed=True)
        if finish is None:
            raise _sdk.no_stop_reason(self.name)
        self._stream_usage = raw_usage is not None
        return "".join(parts), finish, raw_usage, raw.http_request

    async def aclose(self) -> None:
        """Close the HTTP connections of the client."""
        await self._client.close()

    def __repr__(self) -> str:
        return f"OpenAILLM({self.model!r}, stream={self.stream})"


def _make_client(*, max_retries: int, timeout: float) -> openai_types.AsyncOpenAI:
    try:
        return openai.AsyncOpenAI(
            max_retries=max_retries,
            timeout=openai.Timeout(timeout, connect=min(timeout, _sdk.CONNECT_TIMEOUT)),
        )
    except openai.OpenAIError as exc:
        if not os.environ.get("OPENAI_API_KEY"):
            raise MissingAPIKeyError("OpenAI", "OPENAI_API_KEY", hint=_KEY_HINT) from None
        raise UsageError(f"the OpenAI client could not be set up: {exc}") from None


def _first_choice(body: Any) -> tuple[dict[str, Any] | None, Any]:
    """The first choice of a chat completion body and its usage (each ``None`` if absent).

    Raises:
        ValueError: the body is not a chat completion object.
    """
    if not isinstance(body, dict):
        raise ValueError(f"the reply is a JSON {type(body).__name__}, not an object")
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    return (first if isinstance(first, dict) else None), body.get("usage")


def _usage(raw: Any) -> Usage:
    """The usage of a reply, from the body's ``usage`` object."""
    if not isinstance(raw, dict):
        # Unknown, not zero: llama.cpp and others send no usage in streams.
        return Usage.unknown()
    details = raw.get("prompt_tokens_details")
    cached = (details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    prompt = raw.get("prompt_tokens") or 0
    return Usage(
        calls=1,
        input_tokens=max(0, prompt - cached),
        output_tokens=raw.get("completion_tokens") or 0,
        cache_read_input_tokens=cached,
    )


def _stream_error(error: Any, request: Any) -> Exception:
    """The SDK's error for an ``{"error": ...}`` event in a stream, as its own stream raises it."""
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        message = "An error occurred during streaming"
    return openai.APIError(message=message, request=request, body=error)


def _error_fields(body: object) -> tuple[str | None, str | None]:
    """An OpenAI-style error body: ``{"error": {...}}`` or, from some servers, the bare object."""
    error = body.get("error", body) if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    return error.get("code") or error.get("type"), error.get("message")
