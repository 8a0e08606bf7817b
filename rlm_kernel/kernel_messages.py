"""The messages of one execute request: its outputs on iopub until idle, then its shell reply.

A local :class:`~rlm_kernel.kernel.KernelSession` reads them here, interrupting a cell that runs
past its time limit and noticing a kernel process that died while it waited for a message.
"""

from __future__ import annotations

import inspect
import queue
import time
from collections.abc import Awaitable, Callable
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient

from .outputs import OutputCollector

__all__ = ["LIVENESS_INTERVAL", "OUTPUT_MSG_TYPES", "collect", "drain"]

OUTPUT_MSG_TYPES = frozenset(
    {"stream", "display_data", "execute_result", "error", "clear_output", "update_display_data"}
)
"""The iopub message types that are a cell's outputs."""

# How long to wait for a message before checking that the kernel process still lives.
LIVENESS_INTERVAL = 0.25


async def collect(
    kc: AsyncKernelClient,
    msg_id: str,
    collector: OutputCollector,
    timeout: float | None,
    on_output: Callable[[dict[str, Any]], Any] | None,
    *,
    interrupt: Callable[[], Awaitable[None]],
    exited: Callable[[], Awaitable[bool]],
    interrupt_grace: float,
) -> tuple[str, int | None, dict[str, Any] | None]:
    """Read one execute request's iopub messages until idle, then its shell reply.

    Args:
        kc: the kernel's client, its iopub and shell channels started.
        msg_id: the execute request's message id.
        collector: where the request's outputs go.
        timeout: seconds before ``interrupt`` is called (``None``: no limit).
        on_output: called with each output message as it arrives (may be async).
        interrupt: interrupts the kernel.
        exited: whether the kernel process has exited, asked while no message arrives.
        interrupt_grace: seconds the cell may take to stop after the interrupt.

    Returns:
        ``(outcome, execution_count, reply content)`` where outcome is ``done``, ``timeout``
        (interrupted in time), ``hung`` (the interrupt did not take) or ``died``.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    interrupted = False
    execution_count: int | None = None
    while True:
        wait = LIVENESS_INTERVAL
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        try:
            msg = await kc.get_iopub_msg(timeout=wait)
        except queue.Empty:
            msg = None
        if msg is not None and msg["parent_header"].get("msg_id") == msg_id:
            msg_type = msg["header"]["msg_type"]
            if msg_type == "status":
                if msg["content"]["execution_state"] == "idle":
                    break
            elif msg_type in OUTPUT_MSG_TYPES:
                collector.add(msg)
                if on_output is not None:
                    result = on_output(msg)
                    if inspect.isawaitable(result):
                        await result
            elif msg_type == "execute_input":
                execution_count = msg["content"].get("execution_count")
        if deadline is not None and time.monotonic() >= deadline:
            if interrupted:
                return "hung", execution_count, None
            await interrupt()
            interrupted = True
            deadline = time.monotonic() + interrupt_grace
        elif msg is None and await exited():
            await drain(kc, msg_id, collector, on_output)
            return "died", execution_count, None

    while True:
        try:
            reply = await kc.get_shell_msg(timeout=LIVENESS_INTERVAL)
        except queue.Empty:
            if await exited():
                return "died", execution_count, None
            continue
        if reply["parent_header"].get("msg_id") == msg_id:
            content = reply["content"]
            count = content.get("execution_count", execution_count)
            return ("timeout" if interrupted else "done"), count, content


async def drain(
    kc: AsyncKernelClient,
    msg_id: str,
    collector: OutputCollector,
    on_output: Callable[[dict[str, Any]], Any] | None,
) -> None:
    """Collect the output a dead kernel sent before it died."""
    while True:
        try:
            msg = await kc.get_iopub_msg(timeout=0)
        except queue.Empty:
            return
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["header"]["msg_type"] in OUTPUT_MSG_TYPES
        ):
            collector.add(msg)
            if on_output is not None:
                result = on_output(msg)
                if inspect.isawaitable(result):
                    await result
