"""The result of running one cell: ``ExecResult``, and how a request's ending maps to it.

Every kind of session (a local :class:`~rlm_kernel.kernel.KernelSession`, a gateway kernel, the
in-process ``%%rlm --here`` session) returns an :class:`ExecResult`. The two that talk to a
kernel process build it with :func:`execution_result` from how the request ended (its reply
came, it timed out, it hung, or the kernel died), so a failed cell reads the same on both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .outputs import OutputCollector

__all__ = ["ExecResult", "execution_result"]


@dataclass
class ExecResult:
    """What running one cell produced.

    Attributes:
        status: ``ok``; ``error`` (the code raised); ``timeout`` (interrupted after the
            timeout); ``kernel_died`` (the process exited while running the cell).
        outputs: nbformat outputs, capped at ``max_output_bytes``.
        execution_count: the kernel's execution counter for this cell, if it got one.
        duration_s: seconds from sending the code to the end of its output.
        output_bytes: size of all output seen, including what the cap dropped.
        error: ``(ename, evalue)`` when the status is not ``ok``.
        restarted: the kernel was restarted after this cell (it died, or ignored the interrupt),
            so variables other than those made by ``setup_code`` are gone.
        user_expressions: the results of the ``user_expressions`` asked for, evaluated after
            the cell in the same request (Jupyter's ``{status, data}`` per name).
    """

    status: Literal["ok", "error", "timeout", "kernel_died"]
    outputs: list[Any] = field(default_factory=list)
    execution_count: int | None = None
    duration_s: float = 0.0
    output_bytes: int = 0
    error: tuple[str, str] | None = None
    restarted: bool = False
    user_expressions: dict[str, Any] = field(default_factory=dict)


def execution_result(
    outcome: str,
    reply: Mapping[str, Any] | None,
    *,
    collector: OutputCollector,
    execution_count: int | None,
    duration_s: float,
    timeout: float | None,
    restarted: bool,
    died: str = "the kernel died while running the cell",
    replaced: str = "restarted",
) -> ExecResult:
    """The result of one execute request from how it ended, for every kind of session.

    Args:
        outcome: ``done`` (the reply came), ``timeout`` (interrupted, then it ended), ``hung``
            (it ignored the interrupt) or ``died`` (the kernel process went away).
        reply: the ``execute_reply`` content, if one came.
        collector: the cell's outputs.
        execution_count: the kernel's count for the cell.
        duration_s: seconds the request took.
        timeout: the cell's time limit.
        restarted: the kernel was started again after this cell (its variables are gone).
        died: what happened, for a dead kernel (e.g. the exit signal).
        replaced: how the session words getting a new kernel (``restarted``, ``replaced``).
    """
    status: Literal["ok", "error", "timeout", "kernel_died"] = "ok"
    error: tuple[str, str] | None = None
    gone = f"; it was {replaced}, so its variables are gone" if restarted else ""
    content = reply or {}
    if outcome == "done":
        if content.get("status") == "error":
            status, error = "error", (content.get("ename", "Error"), content.get("evalue", ""))
        elif content.get("status") == "aborted":
            status, error = "error", ("Aborted", "the kernel aborted this execution")
    elif outcome == "died":
        status, error = "kernel_died", ("DeadKernelError", f"{died}{gone}")
    else:
        status = "timeout"
        message = f"the cell did not finish within {timeout:g} s and was interrupted"
        if outcome == "hung":
            message += "; the kernel did not respond to the interrupt" + gone.replace(
                "; it was", " and was"
            )
        error = ("TimeoutError", message)
    return ExecResult(
        status=status,
        outputs=collector.outputs,
        execution_count=execution_count,
        duration_s=duration_s,
        output_bytes=collector.total_bytes,
        error=error,
        restarted=restarted,
        user_expressions=dict(content.get("user_expressions") or {}),
    )
