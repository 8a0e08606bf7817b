"""A plain Python callable as a model: the way tests and users plug in scripted or local models."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..types import SAMPLING_KEYWORDS, Completion, Message, Usage


class FunctionLLM:
    """Wrap ``fn(messages) -> str`` (or ``-> Completion``, sync or async) as an :class:`LLM`.

    An ``async`` function is awaited on the event loop. A plain function runs in a worker thread,
    so one that blocks (a local HTTP call, ``time.sleep``) does not stall concurrent sub-calls.
    Token counts are zero and the cost is ``None`` unless the function returns a
    :class:`~rlm_kernel.types.Completion` that says otherwise. Sampling keywords the user set
    (``temperature``, ``seed``) are passed to a function that takes them.
    """

    def __init__(self, fn: Callable[..., object], name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"FunctionLLM needs a callable, not {fn!r}")
        self.fn = fn
        self.name = name or f"function:{getattr(fn, '__qualname__', type(fn).__name__)}"
        # A callable object with an ``async def __call__`` is async too.
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            type(fn).__call__
        )
        self.sampling_keywords = _keywords(fn)

    async def complete(
        self, messages: Sequence[Message], *, max_tokens: int, **sampling: Any
    ) -> Completion:
        """Call the function with a copy of ``messages`` (and the sampling keywords given)."""
        # The call's time includes handing it the conversation, as an HTTP model's includes
        # sending it. The function gets its own copy: a script that mutates it cannot corrupt
        # the run's history.
        start = time.perf_counter()
        convo = [dict(m) for m in messages]
        if self._is_async:
            out = await self.fn(convo, **sampling)
        else:
            out = await asyncio.to_thread(self.fn, convo, **sampling)
            if inspect.isawaitable(out):
                out = await out
        latency = time.perf_counter() - start
        if isinstance(out, Completion):
            return out
        if not isinstance(out, str):
            raise TypeError(f"model function {self.name} returned {type(out).__name__}, not str")
        return Completion(text=out, model=self.name, usage=Usage(calls=1), latency_s=latency)

    def __repr__(self) -> str:
        return f"FunctionLLM({self.name!r})"


def _keywords(fn: Callable[..., object]) -> frozenset[str] | None:
    """The sampling keywords ``fn`` takes by name; ``None`` when it takes ``**kwargs``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return frozenset(p.name for p in params if p.kind in named) & frozenset(SAMPLING_KEYWORDS)
