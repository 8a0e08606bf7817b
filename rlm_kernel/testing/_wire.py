"""The wire formats of the fake model server: prompts in, replies, streams and errors out.

Everything here is plain data shaping with no server state: how each API's request body reads as
prompt segments, how a reply is streamed as server-sent events, and the shape of error bodies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Api = Literal["anthropic", "openai"]


def estimate_tokens(chars: int) -> int:
    """Tokens the server bills for ``chars`` characters: ``ceil(chars / 4)``."""
    return math.ceil(chars / 4)


ANTHROPIC_ERROR_TYPES = {
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
OPENAI_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}
DEFAULT_MESSAGES = {
    400: "Invalid request",
    401: "invalid x-api-key",
    404: "Not found",
    429: "Rate limit exceeded",
    500: "Internal server error",
    529: "Overloaded",
}
STREAM_PIECES = 8  # a streamed reply is cut into at most this many text deltas


@dataclass
class Segment:
    """A piece of the prompt in order: one system block or one content block of a message."""

    role: str
    text: str
    marked: bool = False
    chars: int = field(init=False)

    def __post_init__(self) -> None:
        self.chars = len(self.text)


class ApiError(Exception):
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


# -- prompt parsing ----------------------------------------------------------------------------


def text_of(content: Any) -> str:
    """The text of a message content: a string, or the text blocks of a block list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    return "" if content is None else str(content)


def block_segment(role: str, block: Any) -> Segment:
    if isinstance(block, dict) and block.get("type") == "text":
        text = str(block.get("text", ""))
    else:
        # Images, tool results and the like count by the size of their JSON.
        text = json.dumps(block, sort_keys=True)
    marked = isinstance(block, dict) and bool(block.get("cache_control"))
    return Segment(role, text, marked)


def anthropic_prompt(body: dict) -> tuple[list[Segment], list[dict]]:
    """The prompt as ordered segments (for usage and caching) and as plain messages."""
    segments: list[Segment] = []
    convo: list[dict] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        segments.append(Segment("system", system))
    elif isinstance(system, list):
        segments.extend(block_segment("system", b) for b in system)
    if system:
        convo.append({"role": "system", "content": text_of(system)})
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            raise ApiError(400, "messages: each message is an object with role and content")
        role = str(message.get("role"))
        content = message.get("content")
        if isinstance(content, list):
            segments.extend(block_segment(role, b) for b in content)
        else:
            segments.append(Segment(role, text_of(content)))
        convo.append({"role": role, "content": text_of(content)})
    if body.get("cache_control") and segments:
        # Request-level cache_control caches up to the last block, like automatic caching.
        segments[-1].marked = True
    return segments, convo


def openai_prompt(messages: list) -> tuple[list[Segment], list[dict]]:
    segments: list[Segment] = []
    convo: list[dict] = []
    for message in messages:
        if not isinstance(message, dict):
            raise ApiError(400, "each message must be an object with role and content")
        role = str(message.get("role"))
        role = "system" if role == "developer" else role
        text = text_of(message.get("content"))
        segments.append(Segment(role, text))
        convo.append({"role": role, "content": text})
    return segments, convo


def truncate(text: str, max_tokens: int | None, done: str, cut: str) -> tuple[str, str]:
    if max_tokens is not None and estimate_tokens(len(text)) > max_tokens:
        return text[: max_tokens * 4], cut
    return text, done


def pieces(text: str) -> list[str]:
    size = max(1, math.ceil(len(text) / STREAM_PIECES))
    return [text[i : i + size] for i in range(0, len(text), size)]


# -- streaming ---------------------------------------------------------------------------------


def sse(event: str | None, data: object) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def anthropic_events(message: dict) -> Iterator[bytes]:
    """The SSE events of a streamed Messages API reply, in the order the real API sends them."""
    usage = message["usage"]
    start_usage = {**usage, "output_tokens": min(1, usage["output_tokens"])}
    yield sse(
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
    yield sse(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    yield sse("ping", {"type": "ping"})
    for piece in pieces(message["content"][0]["text"]):
        yield sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            },
        )
    yield sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    yield sse(
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
    yield sse("message_stop", {"type": "message_stop"})


def openai_chunks(head: dict, text: str, finish: str | None, usage: dict | None) -> Iterator[bytes]:
    """The SSE chunks of a streamed Chat Completions reply, ending with ``[DONE]``."""
    base = {**head, "object": "chat.completion.chunk"}
    if usage is not None:
        base["usage"] = None

    def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse(None, {**base, "choices": [choice]})

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for piece in pieces(text):
        yield chunk({"content": piece})
    yield chunk({}, finish)
    if usage is not None:
        yield sse(None, {**base, "choices": [], "usage": usage})
    yield sse(None, "[DONE]")


# -- errors ------------------------------------------------------------------------------------


def unauthorized_message(api: Api, headers: Mapping[str, str]) -> str:
    # Never echo the key that was sent: error messages end up in logs and notebooks.
    sent = "x-api-key" in headers or "authorization" in headers
    if api == "anthropic":
        return "invalid x-api-key" if sent else "x-api-key header is required"
    if sent:
        return "Incorrect API key provided. This fake server expects the key it was created with."
    return "You didn't provide an API key."
