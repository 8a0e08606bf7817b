"""The kernel's operating-system process: its environment, the host's memory, its cleanup.

A kernel gets only allowlisted host variables (:func:`kernel_env`), so API keys never reach it;
the host marks itself non-dumpable (:func:`protect_host_memory`) so a kernel of the same user
cannot read the host's memory either. Each kernel leads a process group of its own: killing the
group takes every process the kernel's code started with it, and an ``atexit`` safety net
removes the group and the session's runtime directory if a session was never shut down.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import pathlib
import shutil
import signal
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ENV_ALLOWLIST",
    "Leftovers",
    "describe_exit",
    "has_children",
    "has_exited",
    "kernel_env",
    "kill_group",
    "protect_host_memory",
    "remove_leftovers",
    "track",
    "untrack",
]

ENV_ALLOWLIST = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "TERM",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TMP",
        "TEMP",
        "PYTHONPATH",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "CONDA_DEFAULT_ENV",
        "SYSTEMROOT",
        "PYTHONHASHSEED",
        "IPYKERNEL_CELL_NAME",
    }
)
"""Environment variables passed from the host to the kernel (plus every ``LC_*``)."""


_PR_SET_DUMPABLE = 4


@functools.cache
def protect_host_memory() -> bool:
    """Stop processes of the same user, such as our kernels, from reading this process's memory.

    The kernel's environment holds no secrets, but the host's does (API keys), and on Linux a
    process of the same user can read ``/proc/<host pid>/environ`` and ``/mem``. Marking the host
    non-dumpable (as ssh-agent does) makes those files unreadable to other processes of the user.
    It cannot stop root, and it also disables core dumps of the host. Returns whether it applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def kernel_env(
    extra_names: Iterable[str] = (), env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The kernel's environment: allowlisted host variables, then ``env`` on top.

    Only names in ``ENV_ALLOWLIST``, ``LC_*`` and ``extra_names`` are copied from the host,
    so variables such as ``ANTHROPIC_API_KEY`` never reach the kernel unless named on purpose.
    """
    allowed = ENV_ALLOWLIST | set(extra_names)
    result = {
        name: value
        for name, value in os.environ.items()
        if name in allowed or name.startswith("LC_")
    }
    result.setdefault("PATH", os.defpath)
    result.update(env or {})
    return result


@dataclass(eq=False)
class Leftovers:
    """What the atexit safety net must remove if a session was never shut down."""

    runtime_dir: pathlib.Path
    pgid: int | None = None


_live_sessions: set[Leftovers] = set()
_atexit_registered = False


def kill_group(pgid: int | None) -> None:
    """SIGKILL a kernel's process group: the kernel and every process its code started."""
    if not pgid or pgid <= 1 or not hasattr(os, "killpg") or pgid == os.getpgrp():
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def track(leftovers: Leftovers) -> None:
    """Remember a session's process group and directory until it is shut down."""
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_cleanup_at_exit)
        _atexit_registered = True
    _live_sessions.add(leftovers)


def untrack(leftovers: Leftovers) -> None:
    """Forget a session that was shut down: the safety net has nothing left to remove for it."""
    _live_sessions.discard(leftovers)


def remove_leftovers(leftovers: Leftovers) -> None:
    """Kill a session's process group and remove its runtime directory."""
    kill_group(leftovers.pgid)
    shutil.rmtree(leftovers.runtime_dir, ignore_errors=True)


def _cleanup_at_exit() -> None:
    for leftovers in list(_live_sessions):
        remove_leftovers(leftovers)
    _live_sessions.clear()


def has_exited(process: Any) -> bool:
    """Whether a child process has exited, without reaping it.

    While the exited kernel stays unreaped its PID, and so its process-group ID, cannot be
    reused; that makes it safe to kill the group afterwards.
    """
    if process.returncode is not None:
        return True
    if not hasattr(os, "waitid"):
        return process.poll() is not None
    try:
        info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def has_children(pid: int) -> bool | None:
    """Whether a process has child processes (Linux ``/proc``); ``None`` when unknown."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
        return any(
            pathlib.Path(f"/proc/{pid}/task/{tid}/children").read_text().strip() for tid in threads
        )
    except OSError:
        return None


def describe_exit(returncode: int | None) -> str:
    """How the kernel process ended, in words, from its return code."""
    if returncode is None:
        return "the kernel process ended"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the kernel process was killed by {name}"
    return f"the kernel process exited with code {returncode}"
