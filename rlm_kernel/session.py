"""Where the model's code runs: the :class:`Session` protocol, and a pool of warm kernels.

A run asks a :class:`SessionFactory` for a session with its setup code (which loads ``context``
and connects ``llm_query`` & co. to the host) and runs each code block with
:meth:`Session.execute`. :class:`~rlm_kernel.kernel.KernelSession` (a fresh local kernel) and
:class:`~rlm_kernel.here.HereSession` (the current IPython kernel) are sessions; so is anything
else with the same two methods, e.g. a kernel on a gateway.

Child runs start often and in bursts (``rlm_query_batched``), so a :class:`KernelPool` keeps a
few kernels started ahead of time and hands them out already running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from .kernel import ExecResult, KernelSession
from .outputs import OutputCollector

__all__ = ["KernelPool", "Session", "SessionFactory"]


class Session(Protocol):
    """A place to run code: state kept from one call to the next."""

    async def execute(
        self,
        code: str,
        *,
        timeout: float | None = None,
        collector: OutputCollector | None = None,
        cell_id: str | None = None,
        user_expressions: dict[str, str] | None = None,
    ) -> ExecResult:
        """Run ``code``; a timeout interrupts it (state kept), a dead kernel is restarted.

        ``cell_id`` names the notebook cell (the kernel runtime ties sub-calls to it);
        ``user_expressions`` are evaluated after the code and returned in the result.
        """
        ...


class SessionFactory(Protocol):
    """Makes the session of one run: ``async with factory(setup_code=...) as session``."""

    def __call__(self, *, setup_code: str) -> contextlib.AbstractAsyncContextManager[Any]: ...


class KernelPool:
    """Local kernels started ahead of time for child runs, one per child, never reused.

    A child's kernel is its own for the child's whole run and is shut down after it, as a
    run's kernel always is. :meth:`fill` starts ``warm`` kernels side by side (at the start of
    a run tree); a burst of up to ``warm`` children finds them started, and children beyond
    that start theirs at once, side by side, never one after another.

    A kernel start-up takes most of a CPU for a good part of a second, so replacements are
    started gently: once none of the pool's kernels is in use (a burst's replacements would
    slow the burst), one at a time (the run that goes on after the burst keeps a CPU).

    Args:
        warm: kernels kept started and waiting.
        kernel_name: the kernelspec.
    """

    def __init__(self, warm: int = 2, *, kernel_name: str = "python3") -> None:
        self.warm = max(0, warm)
        self.kernel_name = kernel_name
        self._ready: list[asyncio.Task[KernelSession]] = []
        self._in_use = 0
        self._refill: asyncio.Task[None] | None = None
        self._closed = False

    def fill(self) -> None:
        """Start kernels until ``warm`` are started or starting, all at once."""
        while not self._closed and len(self._ready) < self.warm:
            self._ready.append(asyncio.ensure_future(self._start()))

    async def _start(self) -> KernelSession:
        ks = KernelSession(kernel_name=self.kernel_name, shutdown_grace=0)
        await ks.start()
        return ks

    async def _refill_one_by_one(self) -> None:
        while not self._closed and self._in_use == 0 and len(self._ready) < self.warm:
            task = asyncio.ensure_future(self._start())
            self._ready.append(task)
            # wait() rather than await: a child may take this kernel meanwhile, and closing
            # the pool cancels this loop, which must not cancel the child's kernel start.
            await asyncio.wait([task])
            if task.cancelled() or task.exception() is not None:
                return  # kernels do not start; the next child will say why

    def _take(self) -> asyncio.Task[KernelSession]:
        for i, task in enumerate(self._ready):
            if task.done():
                return self._ready.pop(i)
        return self._ready.pop(0) if self._ready else asyncio.ensure_future(self._start())

    @contextlib.asynccontextmanager
    async def session(self, *, setup_code: str) -> AsyncIterator[KernelSession]:
        """A running kernel configured with ``setup_code``; shut down when the block ends."""
        if self._closed:
            raise RuntimeError("the kernel pool is closed")
        task = self._take()
        ks: KernelSession | None = None
        self._in_use += 1
        try:
            ks = await task
            await ks.configure(setup_code)
            yield ks
        finally:
            if ks is None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    ks = await task
            if ks is not None:
                await ks.shutdown()
            self._in_use -= 1
            if (
                self._in_use == 0
                and not self._closed
                and (self._refill is None or self._refill.done())
            ):
                self._refill = asyncio.ensure_future(self._refill_one_by_one())

    async def aclose(self) -> None:
        """Shut down every waiting kernel (and stop starting new ones)."""
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
            with contextlib.suppress(BaseException):
                await self._refill
        ready, self._ready = self._ready, []
        for task in ready:
            task.cancel()
        for task in ready:
            with contextlib.suppress(BaseException):
                ks = await task
                await ks.shutdown()
