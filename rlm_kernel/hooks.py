"""Optional hooks, sync or async, and the sync twin of a coroutine function."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
Hook = Callable[..., object]

__all__ = ["Hook", "run_hook", "run_sync"]


async def run_hook(hook: Hook | None, *args: Any, **kwargs: Any) -> None:
    """Call an optional hook, awaiting it if it returns an awaitable."""
    if hook is None:
        return
    result = hook(*args, **kwargs)
    if inspect.isawaitable(result):
        await result


def run_sync(coro_fn: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """The sync twin of a coroutine function.

    Outside an event loop it uses ``asyncio.run`` (so Ctrl-C cancels the run and its clean-up
    runs); inside one (Jupyter) it hands the coroutine to jupyter_core's background runner.
    """

    @functools.wraps(coro_fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro_fn(*args, **kwargs))  # type: ignore[arg-type]
        from jupyter_core.utils import run_sync as jupyter_run_sync

        return jupyter_run_sync(coro_fn)(*args, **kwargs)  # type: ignore[arg-type]

    return wrapper
