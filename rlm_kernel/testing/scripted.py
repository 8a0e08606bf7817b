"""Scripted models: the replies a fake model gives, in order, with the calls it received."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

Reply = str | Callable[[list[dict]], str]
"""A reply: fixed text, or a function of the call's messages that returns the text."""


class ScriptExhausted(LookupError):
    """A scripted model was called more times than it has replies."""


class ScriptedModel:
    """A model that answers each call with the next reply of its script.

    A reply is either a string or a callable that receives the call's messages (the system prompt
    first as ``{"role": "system", "content": ...}``, then the conversation, every content a plain
    string) and returns the reply text. Every call is recorded in :attr:`calls`, including one
    that finds the script empty; such a call fails so that a test notices a model asked more often
    than it expected.

    Args:
        replies: the script, consumed one reply per call.
        latency: seconds to wait before each reply, so concurrent calls overlap like real ones.
        name: the name used in error messages; defaults to the name the server knows it by.

    Example::

        model = ScriptedModel(["first answer", lambda messages: f"{len(messages)} messages"])
    """

    def __init__(
        self,
        replies: Sequence[Reply] = (),
        *,
        latency: float = 0.0,
        name: str | None = None,
    ) -> None:
        if latency < 0:
            raise ValueError(f"latency must be >= 0, not {latency!r}")
        self.latency = latency
        self.name = name
        self.calls: list[list[dict]] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.enqueue(*replies)

    def enqueue(self, *replies: Reply) -> None:
        """Append replies to the end of the script."""
        for reply in replies:
            if not (isinstance(reply, str) or callable(reply)):
                raise TypeError(f"a reply is a str or a callable, not {type(reply).__name__}")
        with self._lock:
            self._replies.extend(replies)

    @property
    def remaining(self) -> int:
        """How many replies are left in the script."""
        with self._lock:
            return len(self._replies)

    def __call__(self, messages: list[dict]) -> str:
        """Answer one call: record it, wait ``latency`` seconds, return the next reply's text.

        Raises:
            ScriptExhausted: the script has no replies left.
        """
        with self._lock:
            self.calls.append(messages)
            reply = self._replies.popleft() if self._replies else None
            count = len(self.calls)
        if reply is None:
            raise ScriptExhausted(
                f"scripted model {self.name or '(unnamed)'!r} has no more replies "
                f"(it was called {count} times)"
            )
        if self.latency:
            time.sleep(self.latency)
        text = reply(messages) if callable(reply) else reply
        if not isinstance(text, str):
            raise TypeError(f"a reply function returned {type(text).__name__}, not str")
        return text

    def __repr__(self) -> str:
        return f"ScriptedModel(name={self.name!r}, calls={len(self.calls)}, left={self.remaining})"
