"""Claude models through the official ``anthropic`` SDK (``anthropic:<model id>``)."""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from typing import Any

import anthropic

from ..errors import MissingAPIKeyError, ModelError, UsageError
from ..types import Completion, Message, Usage
from . import _sdk, pricing, prompt_cache, wants_stream

# The SDK refuses a non-streaming request whose max_tokens could take longer than ten minutes
# (it budgets an hour per 128k output tokens); above this many tokens we stream instead.
_NONSTREAMING_MAX_TOKENS = 128_000 * 10 // 60
_CACHE_CONTROL = {"type": "ephemeral"}
# The shortest prompt prefix Anthropic caches, in tokens: shorter ones are sent uncached (no
# write is billed, nothing is read). Haiku models need more than the others.
MIN_CACHEABLE_TOKENS = 1024
MIN_CACHEABLE_TOKENS_HAIKU = 2048
_OFFICIAL_HOST = "api.anthropic.com"
_SAMPLING = frozenset({"temperature", "seed"})
# Which of them this SDK's Messages.create declares (older SDKs have temperature).
_SDK_SAMPLING = _SAMPLING & frozenset(
    inspect.signature(anthropic.resources.AsyncMessages.create).parameters
)


class AnthropicLLM:
    """A Claude model behind the :class:`~rlm_kernel.llm.LLM` protocol.

    Credentials and endpoint come from the SDK's own sources (``ANTHROPIC_API_KEY``,
    ``ANTHROPIC_AUTH_TOKEN``, ``ANTHROPIC_BASE_URL``, its profiles) and are checked here, before
    any run starts. The SDK retries 408, 409, 429 and 5xx responses with backoff.

    Args:
        model: the model id, e.g. ``"claude-sonnet-5-5"``.
        stream: stream replies; ``None`` (the default) streams replies that may be longer than
            ``STREAM_ABOVE_TOKENS``, so long root turns never hit HTTP timeouts and short
            sub-calls skip the cost of server-sent events.
        max_retries: retries the SDK makes after a failed attempt.
        timeout: seconds for one HTTP attempt.
        cache: mark for prompt caching what a later request re-reads: the system prompt and
            the conversation so far (a request with a system prompt or earlier turns), so each
            turn reads the previous ones from the cache; and a batch's shared prefix when the
            run says it is worth it (``rlm_kernel.llm.prompt_cache``). A lone one-off prompt
            is never marked: a cache write costs 1.25 times the input price.
        client: an ``anthropic.AsyncAnthropic`` to use instead of building one (its own retry
            and timeout settings then apply).

    Raises:
        MissingAPIKeyError: no credential was found.
        UsageError: the user's prices file is not valid.
    """

    def __init__(
        self,
        model: str,
        *,
        stream: bool | None = None,
        max_retries: int = 2,
        timeout: float = 600.0,
        cache: bool = True,
        client: anthropic.AsyncAnthropic | None = None,
    ) -> None:
        self.model = model
        self.name = f"anthropic:{model}"
        self.stream = stream
        self.cache = cache
        if client is None:
            client = _make_client(max_retries=max_retries, timeout=timeout)
        self._client = client
        # Published prices apply only to the official endpoint, not to proxies or look-alikes.
        self.official = client.base_url.host == _OFFICIAL_HOST
        # The official API takes only what the SDK declares (it has no seed, and current SDKs
        # no temperature either); a compatible server of one's own gets them in the body.
        self.sampling_keywords = _SDK_SAMPLING if self.official else _SAMPLING
        pricing.user_prices()  # a broken prices file fails here, before any run starts

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> Completion:
        """Send the conversation and return the reply with its usage, cost and retry count.

        ``temperature`` and ``seed`` are sent when given: as the SDK's parameters where it has
        them, else in the request body, which only servers other than the official one take
        (see ``sampling_keywords``).

        Raises:
            ModelError: the call failed after the SDK's retries (HTTP error, timeout, no
                connection, a connection lost mid-reply, a reply that is not valid), or the
                server sent no reply or a stream without its stop reason.
        """
        params = self._params(messages, max_tokens)
        sampling = {
            k: v for k, v in (("temperature", temperature), ("seed", seed)) if v is not None
        }
        refused = sorted(set(sampling) - self.sampling_keywords)
        if refused:
            raise UsageError(
                f"{self.name}: the Anthropic API takes no {', '.join(refused)}; leave it unset"
            )
        body = {k: v for k, v in sampling.items() if k not in _SDK_SAMPLING}
        params.update({k: v for k, v in sampling.items() if k in _SDK_SAMPLING})
        if body:
            params["extra_body"] = body
        streamed = wants_stream(self.stream, max_tokens) or max_tokens > _NONSTREAMING_MAX_TOKENS
        start = time.perf_counter()
        try:
            if streamed:
                message, request = await self._streamed(params)
            else:
                raw = await self._client.messages.with_raw_response.create(**params)
                message = await raw.parse()
                request = raw.http_request
        except ModelError:
            raise
        except Exception as exc:
            error = _sdk.model_error(
                self.name,
                exc,
                anthropic,
                error_fields=_error_fields,
                secrets=(self._client.api_key, self._client.auth_token),
                base_url=self._client.base_url,
            )
            if error is None:
                raise
            raise error from exc
        latency = time.perf_counter() - start
        if not message.content and message.stop_reason is None:
            raise _sdk.no_reply(self.name, streamed=False)

        u = message.usage
        usage = Usage(
            calls=1,
            input_tokens=u.input_tokens or 0,
            output_tokens=u.output_tokens or 0,
            cache_read_input_tokens=u.cache_read_input_tokens or 0,
            cache_creation_input_tokens=u.cache_creation_input_tokens or 0,
        )
        text = "".join(block.text for block in message.content if block.type == "text")
        return _sdk.completion(
            "anthropic",
            self.model,
            text=text,
            usage=usage,
            latency_s=latency,
            request=request,
            stop_reason=message.stop_reason,
            official=self.official,
        )

    async def _streamed(self, params: dict[str, Any]) -> tuple[Any, Any]:
        """Stream a reply; an empty stream, or one cut before its stop reason, is an error."""
        started = False
        async with self._client.messages.stream(**params) as stream:
            async for event in stream:
                started = started or event.type == "message_start"
            if not started:
                raise _sdk.no_reply(self.name, streamed=True)
            message = await stream.get_final_message()
            request = stream.response.request
        if message.stop_reason is None:
            raise _sdk.no_stop_reason(self.name)
        return message, request

    async def aclose(self) -> None:
        """Close the HTTP connections of the client."""
        await self._client.close()

    def _params(self, messages: Sequence[Message], max_tokens: int) -> dict[str, Any]:
        """The request parameters: system prompt apart, cache breakpoints where they pay off."""
        system, turns = _split_system(messages, self.name)
        params: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens}
        if system:
            if self.cache:
                params["system"] = [
                    {"type": "text", "text": system, "cache_control": _CACHE_CONTROL}
                ]
            else:
                params["system"] = system
        converted: list[dict[str, Any]] = [
            {"role": m["role"], "content": m["content"]} for m in turns
        ]
        conversation = bool(system) or len(converted) > 1
        if self.cache and converted and conversation:
            # A breakpoint on the newest message caches the whole conversation so far; the next
            # turn repeats that prefix and reads it from the cache.
            last = converted[-1]
            last["content"] = _with_cache_control(last["content"])
        elif self.cache and len(converted) == 1:
            self._mark_shared_prefix(converted[0])
        params["messages"] = converted
        return params

    def _mark_shared_prefix(self, message: dict[str, Any]) -> None:
        """Split a batch's shared prefix into a block of its own, marked, when it is cacheable."""
        shared, content = prompt_cache.SHARED_PREFIX.get(), message["content"]
        if not shared or not isinstance(content, str) or shared >= len(content):
            return
        minimum = MIN_CACHEABLE_TOKENS_HAIKU if "haiku" in self.model else MIN_CACHEABLE_TOKENS
        if shared < minimum * prompt_cache.CHARS_PER_TOKEN:
            return
        message["content"] = [
            {"type": "text", "text": content[:shared], "cache_control": _CACHE_CONTROL},
            {"type": "text", "text": content[shared:]},
        ]

    def __repr__(self) -> str:
        return f"AnthropicLLM({self.model!r}, stream={self.stream}, cache={self.cache})"


def _make_client(*, max_retries: int, timeout: float) -> anthropic.AsyncAnthropic:
    try:
        client = anthropic.AsyncAnthropic(
            max_retries=max_retries,
            timeout=anthropic.Timeout(timeout, connect=min(timeout, _sdk.CONNECT_TIMEOUT)),
        )
    except anthropic.CredentialsError as exc:
        # A config directory without a usable profile: no credential at all, as far as the
        # user is concerned, but the SDK's reason helps when a profile was meant to work.
        raise MissingAPIKeyError(
            "Anthropic", "ANTHROPIC_API_KEY", hint=f"no usable SDK profile either: {exc}"
        ) from None
    if client.api_key is None and client.auth_token is None and client.credentials is None:
        raise MissingAPIKeyError("Anthropic", "ANTHROPIC_API_KEY")
    return client


def _split_system(messages: Sequence[Message], name: str) -> tuple[str, list[Message]]:
    turns = list(messages)
    system = ""
    if turns and turns[0].get("role") == "system":
        system = turns.pop(0)["content"]
    for m in turns:
        if m.get("role") not in ("user", "assistant"):
            raise UsageError(
                f"{name}: only the first message may be a system message; got role "
                f"{m.get('role')!r} later in the conversation"
            )
    return system, turns


def _with_cache_control(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content, "cache_control": _CACHE_CONTROL}]
    blocks = [dict(block) for block in content]
    if blocks:
        blocks[-1]["cache_control"] = _CACHE_CONTROL
    return blocks


def _error_fields(body: object) -> tuple[str | None, str | None]:
    """An Anthropic error body: ``{"type": "error", "error": {"type": ..., "message": ...}}``."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    return error.get("type"), error.get("message")
