"""What the fake model server keeps of each request, and the failures queued for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ._wire import Api

Fault = Literal["reset", "hang", "malformed", "cut", "empty", "no_finish", "no_usage"]
"""A way to break a reply other than an HTTP error status; see :meth:`FakeModelServer.fault`."""

CREDENTIAL_HEADERS = frozenset(
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
class Failure:
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
