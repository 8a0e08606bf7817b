"""Atomic notebook files: each version lands whole, through a temporary file and a rename.

:func:`atomic_write` writes one version now. :class:`WriteBehind` writes a notebook's versions
on a thread, so that a run's step pays for preparing the bytes and not for the disk: the file
grows with the run, the step must not. Only the newest version waits; a version that a newer one
replaces before its turn is never written, which bounds both the memory held and the disk work
when steps come faster than the disk.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import threading
import uuid
from collections.abc import Iterable

__all__ = ["WRITE_DEADLINE_S", "WriteBehind", "atomic_write"]

WRITE_DEADLINE_S = 120.0
"""How long :meth:`WriteBehind.flush` waits for a write before it gives up."""

# Shared by every notebook of the process: writes are short, and a run's versions stay in
# order because each notebook has at most one write in flight. Its threads finish the queued
# writes before the interpreter exits.
_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def atomic_write(path: pathlib.Path, pieces: Iterable[bytes]) -> None:
    """Write ``pieces`` to ``path`` through a temporary file in the same folder and a rename."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        # os.open applies the umask, so the notebook gets the usual permissions of a new file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with open(fd, "wb") as f:
            f.write(b"".join(pieces))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _forget_pool() -> None:
    # A forked child has the parent's executor object but none of its threads.
    global _executor, _executor_lock
    _executor, _executor_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix="rlm-notebook-writer"
            )
        return _executor


class WriteBehind:
    """The background writes of one notebook file: the newest version submitted wins.

    A write that fails leaves the previous version on disk; its error is raised by the next
    :meth:`submit` or :meth:`flush`, and the version after it is written in full again.
    """

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._pending: list[bytes] | None = None
        self._busy = False  # a write of this file is queued or running
        self._error: OSError | None = None

    def submit(self, pieces: list[bytes]) -> None:
        """Queue this version (``pieces`` joined), replacing any version not yet started.

        Raises:
            OSError: the previous background write failed (this version is still queued).
        """
        with self._cond:
            self._pending = pieces
            schedule = not self._busy
            self._busy = True
        if schedule:
            try:
                _pool().submit(self._drain)
            except RuntimeError:  # the interpreter is shutting down: no thread will take it
                self._drain()
        with self._cond:
            self._raise_error()

    def flush(self, timeout: float = WRITE_DEADLINE_S) -> None:
        """Wait until every version submitted is on disk.

        Raises:
            OSError: a background write failed (the previous version is on disk).
            TimeoutError: the disk took longer than ``timeout`` seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: not self._busy, timeout):
                raise TimeoutError(
                    f"writing the notebook {self.path} took longer than {timeout:g} s"
                )
            self._raise_error()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _drain(self) -> None:
        while True:
            with self._cond:
                pieces, self._pending = self._pending, None
                if pieces is None:
                    self._busy = False
                    self._cond.notify_all()
                    return
            try:
                atomic_write(self.path, pieces)
            except Exception as e:  # kept for the next caller: this thread has no one to tell
                if not isinstance(e, OSError):
                    e = OSError(f"cannot write the notebook {self.path}: {e}")
                with self._cond:
                    self._error = e
