"""What the root model finds inside the kernel: ``context``, ``llm_query`` and friends.

This file runs inside the Jupyter kernel. The host loads it by path as the module
``rlm_kernel_runtime`` (see :func:`bootstrap_code`), so it imports only the standard library and
nothing from ``rlm_kernel``. Sub-calls and the final answer go to the host through a
:class:`Transport`: :class:`SocketTransport` speaks the protocol written down in
``rlm_kernel/bridge_wire.py``; a replay transport answers from a recorded notebook instead.

Errors reach the model as exceptions, never as strings that look like answers::

    SubcallError (RuntimeError)     a sub-call failed after the host's retries
    BudgetExceeded (RuntimeError)   the run's sub-call, cost or time budget is used up
    ReplayMiss (LookupError)        replay met a prompt that was never recorded
    BridgeError (ConnectionError)   the connection to the host failed or was lost
      RunEnded                      a function of a run called after that run ended
    SubcallsRefused (BaseException) a cell kept calling after many refusals; it is stopped

A failure travels from the host as a record ``{"type", "message", "retries"}`` whose ``type`` is
one of these class names (:data:`ERROR_TYPES`); the host's side of that table is
``rlm_kernel.errors.WIRE_TYPES``.

Each request names the cell that made it (``"cell"``: the id the host gave the execute request,
read in a ``pre_run_cell`` hook), so the host records a sub-call on its own cell. A thread keeps
the cell it was started in, so a background thread that calls ``llm_query`` after its cell ended
is still tied to that cell.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import keyword
import mmap
import os
import socket
import struct
import sys
import threading
import types
from collections.abc import Callable, Iterable
from typing import Any, Protocol

__all__ = [
    "ERROR_TYPES",
    "INSTALLED_NAMES",
    "Answer",
    "BridgeError",
    "BudgetExceeded",
    "ReplayMiss",
    "RunEnded",
    "SocketTransport",
    "SubcallError",
    "SubcallsRefused",
    "ToolError",
    "Transport",
    "bootstrap_code",
    "install",
    "load_context",
]

MODULE_NAME = "rlm_kernel_runtime"

_HEADER = struct.Struct(">I")
_RECV_CHUNK = 64 * 1024
_WAITING = object()  # a request whose response has not arrived
_LOST = object()  # a request whose connection was dropped before its response arrived


class _SubcallFailure(RuntimeError):
    """A failed sub-call; for a batch it carries the answers that did arrive.

    Attributes:
        partial: for a batch, the answers in prompt order, ``None`` where a prompt failed.
        errors: for a batch, prompt index → error message.
    """

    def __init__(
        self,
        message: str,
        *,
        partial: list[str | None] | None = None,
        errors: dict[int, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.partial = partial
        self.errors = errors if errors is not None else {}


class SubcallError(_SubcallFailure):
    """A sub-call failed after the host's retries (``.partial`` and ``.errors`` for a batch)."""


class BudgetExceeded(_SubcallFailure):
    """The run's sub-call, cost or time budget is used up; further sub-calls will fail too.

    For a batch, ``.partial`` and ``.errors`` hold what arrived and what failed.
    """


class ReplayMiss(LookupError):
    """Replay met a prompt that the recorded run never sent."""


class BridgeError(ConnectionError):
    """The connection to the host failed or was lost; the next call opens a new one."""


class RunEnded(BridgeError):
    """A REPL function was called after its run ended (``%%rlm --here`` leaves them behind)."""


class Transport(Protocol):
    """Carries one request to the host and returns its response.

    ``op`` is ``"subcall"`` (payload ``kind``, ``prompts``, ``model``; response ``results``) or
    ``"final"`` (payload ``value``, ``via``; response ``ok``). A response holding ``error`` and
    ``type`` reports a failure of the whole request.
    """

    def request(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one request and block until its response arrives."""
        ...


# --------------------------------------------------------------------------- socket transport


class _Connection:
    __slots__ = ("buf", "chunk", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        # Reused for every recv: a fresh large bytes object per call costs more than the call.
        self.chunk = memoryview(bytearray(_RECV_CHUNK))


def _encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message).encode("utf-8")
    return _HEADER.pack(len(body)) + body


def _send(sock: socket.socket, frame: bytes) -> None:
    try:
        sock.sendall(frame)
    except OSError as exc:
        raise BridgeError(f"cannot send to the host: {exc}") from exc


def _read_frames(conn: _Connection) -> list[dict[str, Any]]:
    """Block until at least one whole frame has arrived; return every whole frame received."""
    buf, sock = conn.buf, conn.sock
    while True:
        if len(buf) >= 4:
            (size,) = _HEADER.unpack_from(buf)
            if len(buf) >= 4 + size:
                break
            if size > _RECV_CHUNK:
                # A large response: read it straight into a buffer of its final size.
                body = bytearray(size)
                have = len(buf) - 4
                body[:have] = buf[4:]
                buf.clear()
                view = memoryview(body)
                while have < size:
                    n = _recv_into(sock, view[have:])
                    have += n
                return [json.loads(body)]
        n = _recv_into(sock, conn.chunk)
        buf += conn.chunk[:n]
    frames = []
    start = 0
    while len(buf) - start >= 4:
        (size,) = _HEADER.unpack_from(buf, start)
        end = start + 4 + size
        if len(buf) < end:
            break
        frames.append(json.loads(buf[start + 4 : end]))
        start = end
    del buf[:start]
    return frames


def _recv_into(sock: socket.socket, view: memoryview) -> int:
    try:
        n = sock.recv_into(view)
    except OSError as exc:
        raise BridgeError(f"lost the connection to the host: {exc}") from exc
    if not n:
        raise BridgeError("the host closed the connection")
    return n


def _parse_address(address: str) -> tuple[int, Any]:
    scheme, _, rest = address.partition(":")
    if scheme == "unix" and rest:
        return socket.AF_UNIX, rest
    if scheme == "tcp":
        host, _, port = rest.rpartition(":")
        if host and port.isdigit():
            return socket.AF_INET6 if ":" in host else socket.AF_INET, (host.strip("[]"), int(port))
    raise ValueError(f"bridge address must be 'unix:/path' or 'tcp:HOST:PORT', not {address!r}")


class SocketTransport:
    """The bridge client: one persistent, pipelined connection to the host.

    Connects on the first request and keeps the connection. Several threads may call
    :meth:`request` at once: each request gets an id, one waiting thread at a time reads the
    socket and hands every response to its caller, so a single caller pays no thread switch.
    If anything interrupts a request midway (``KeyboardInterrupt`` from a cell timeout, a
    dropped socket), the connection is closed, which cancels the host's work for it, and the
    next request opens a new one, so the stream never falls out of step.

    Args:
        address: ``"unix:/path/to.sock"`` or ``"tcp:HOST:PORT"``, from ``BridgeServer.address``.
        token: the server's token.
        connect_timeout: seconds to wait for the connection and the token check.
    """

    def __init__(self, address: str, token: str, *, connect_timeout: float = 10.0) -> None:
        self._family, self._target = _parse_address(address)
        self.address = address
        self._token = token
        self._connect_timeout = connect_timeout
        self._cond = threading.Condition(threading.Lock())
        self._send_lock = threading.Lock()
        self._conn: _Connection | None = None
        self._reader: _Connection | None = None  # the connection some thread is reading
        self._pending: dict[int, Any] = {}
        self._next_id = 0

    def request(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one request and block until its response arrives."""
        with self._cond:
            conn = self._conn or self._connect()
            self._next_id += 1
            rid = self._next_id
            self._pending[rid] = _WAITING
        try:
            frame = _encode({"id": rid, "op": op, **payload})
            with self._send_lock:
                _send(conn.sock, frame)
            return self._wait(conn, rid)
        except BaseException:
            self._drop(conn)
            raise
        finally:
            with self._cond:
                self._pending.pop(rid, None)

    def close(self) -> None:
        """Close the connection; a later request opens a new one."""
        conn = self._conn
        if conn is not None:
            self._drop(conn)

    def _connect(self) -> _Connection:
        # Called with self._cond held, so other threads wait for the same connection.
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._connect_timeout)
            sock.connect(self._target)
            if self._family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(sock)
            sock.sendall(_encode({"op": "hello", "token": self._token}))
            reply = _read_frames(conn)[0]
            sock.settimeout(None)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, OSError) and not isinstance(exc, BridgeError):
                raise BridgeError(f"cannot connect to the host at {self.address}: {exc}") from exc
            raise
        if not reply.get("ok"):
            sock.close()
            raise BridgeError(
                f"the host at {self.address} refused the connection: {reply.get('error', reply)}"
            )
        self._conn = conn
        return conn

    def _drop(self, conn: _Connection) -> None:
        with self._cond:
            if self._conn is not conn:
                return
            self._conn = None
            if self._reader is conn:
                self._reader = None
            for rid in self._pending:
                self._pending[rid] = _LOST
            self._cond.notify_all()
        # shutdown() first: it wakes a thread blocked in recv() on this socket.
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)
        conn.sock.close()

    def _wait(self, conn: _Connection, rid: int) -> dict[str, Any]:
        cond = self._cond
        while True:
            with cond:
                while True:
                    response = self._pending.get(rid, _LOST)
                    if response is _LOST:
                        raise BridgeError(
                            "the connection to the host was lost before the answer arrived"
                        )
                    if response is not _WAITING:
                        return response
                    if self._reader is None:
                        self._reader = conn
                        break
                    cond.wait()
            frames: list[dict[str, Any]] = []
            try:
                frames = _read_frames(conn)
            finally:
                with cond:
                    if self._reader is conn:
                        self._reader = None
                    for frame in frames:
                        if frame.get("id") in self._pending:
                            self._pending[frame["id"]] = frame
                    cond.notify_all()


# --------------------------------------------------------------------------- context


def load_context(path: str, kind: str = "text") -> str | list[Any] | dict[str, Any]:
    """Read the run's input from a file.

    The file is memory-mapped and decoded straight from the mapping, so 100 MB of text loads
    in tens of milliseconds without an extra copy.

    Args:
        path: the context file written (or pointed to) by the host.
        kind: ``"text"`` gives a ``str``; ``"json"`` gives what the JSON holds (a list or dict).
    """
    if kind not in ("text", "json"):
        raise ValueError(f"context kind must be 'text' or 'json', not {kind!r}")
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            text = ""  # mmap refuses empty files
        else:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
                text = str(mapping, "utf-8")
    return json.loads(text) if kind == "json" else text


# --------------------------------------------------------------------------- the model's functions


REFUSAL_LIMIT = 20  # refused sub-calls one cell may meet before it is stopped


class SubcallsRefused(BaseException):
    """A cell kept calling after the budget refused it ``REFUSAL_LIMIT`` times; it is stopped.

    Not an ``Exception``: the ``except Exception`` that swallowed the refusals does not catch
    it. Every later sub-call of the same cell raises it again without asking the host.
    """


class _Refusals:
    """Counts the budget's refusals per cell and stops a cell that ignores them."""

    def __init__(self, limit: int = REFUSAL_LIMIT) -> None:
        self.limit = limit
        self._counts: dict[str | None, int] = {}
        self._lock = threading.Lock()

    def check(self, cell: str | None, caller: str) -> None:
        count = self._counts.get(cell, 0)
        if count >= self.limit:
            raise SubcallsRefused(
                f"{caller}: the budget refused {count} sub-calls in this cell and the code kept "
                "calling, so the cell is stopped; no sub-call can be answered any more in this "
                "run: give your best answer with what you have (FINAL)"
            )

    def note(self, cell: str | None, response: dict[str, Any]) -> None:
        results = response.get("results")
        errors = [response.get("error")] if "error" in response else []
        if isinstance(results, list):
            errors += [r.get("error") for r in results if isinstance(r, dict)]
        if any(isinstance(e, dict) and e.get("type") == "BudgetExceeded" for e in errors):
            with self._lock:
                # Only the cell's latest few: the count matters, not a table of old cells.
                if cell not in self._counts and len(self._counts) >= 64:
                    self._counts.pop(next(iter(self._counts)))
                self._counts[cell] = self._counts.get(cell, 0) + 1


class SubcallCancelled(SubcallError):
    """A sub-call was cut short (its cell's time limit, or the run stopped)."""


# Wire type -> the exception the model's code sees; the host maps its exceptions to these names.
ERROR_TYPES: dict[str, type[Exception]] = {
    "SubcallError": SubcallError,
    "BudgetExceeded": BudgetExceeded,
    "ReplayMiss": ReplayMiss,
    "SubcallCancelled": SubcallCancelled,
    "BridgeError": BridgeError,
}


def _error_of(record: Any) -> tuple[type[Exception], str]:
    """The exception class and message of an error record from the host."""
    if not isinstance(record, dict):
        return BridgeError, f"the host sent a malformed error: {record!r}"
    message = str(record.get("message") or "") or "the host reported an error without a message"
    return ERROR_TYPES.get(str(record.get("type")), BridgeError), message


def _raise_for(response: dict[str, Any]) -> None:
    if "error" not in response:
        return
    cls, message = _error_of(response["error"])
    raise cls(message)


class _Cells:
    """Which cell is running, and which cell each thread was started in.

    The host puts its own cell id on each execute request; IPython hands it to ``pre_run_cell``.
    A thread remembers the cell that was running when it started (through a one-shot
    ``threading.setprofile`` hook), so its late calls stay with that cell.
    """

    def __init__(self) -> None:
        self.current: str | None = None
        self._local = threading.local()
        self._previous_hook: Any = None

    def pre_run_cell(self, info: Any = None) -> None:
        self.current = getattr(info, "cell_id", None)

    def post_run_cell(self, *args: object) -> None:
        self.current = None

    def watch_threads(self) -> None:
        getprofile = getattr(threading, "getprofile", None)
        previous = getprofile() if getprofile is not None else None
        if previous is self._birth:
            return
        self._previous_hook = previous
        threading.setprofile(self._birth)

    def _birth(self, frame: Any, event: str, arg: Any) -> None:
        self._local.cell = self.current
        sys.setprofile(self._previous_hook)  # one call per thread, then out of the way

    def of_caller(self) -> str | None:
        if threading.current_thread() is threading.main_thread():
            return self.current
        return getattr(self._local, "cell", self.current)


class _Host:
    """The installed functions' link to the host: a transport, or none at all."""

    def __init__(
        self, transport: Transport | None, cells: _Cells, handoff_dir: str | None = None
    ) -> None:
        self.transport = transport
        self.cells = cells
        self.handoff_dir = handoff_dir
        self.ended: str | None = None
        self.refusals = _Refusals()

    def end(self, note: str = "") -> None:
        """Disconnect for good: every later call raises :class:`RunEnded` (``note`` appended)."""
        self.ended = note
        close = getattr(self.transport, "close", None)
        if callable(close):
            close()

    def _check_running(self, caller: str) -> None:
        if self.ended is not None:
            raise RunEnded(f"{caller}: this run has ended{self.ended}")

    def subcall(
        self,
        kind: str,
        prompts: list[str],
        model: str | None,
        caller: str,
        contexts: list[dict[str, str] | None] | None = None,
    ) -> list[Any]:
        self._check_running(caller)
        if self.transport is None:
            raise BridgeError(
                f"{caller} needs the rlm-kernel host, and this kernel is not connected to one"
            )
        cell = self.cells.of_caller()
        self.refusals.check(cell, caller)
        payload: dict[str, Any] = {
            "kind": kind,
            "prompts": prompts,
            "model": model,
            "cell": cell,
        }
        if contexts is not None:
            payload["contexts"] = contexts
        try:
            response = self.transport.request("subcall", payload)
        except BaseException:
            # The host never took the hand-off files: they are still ours to remove.
            for handoff in contexts or []:
                if handoff is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(handoff["path"])
            raise
        self.refusals.note(cell, response)
        _raise_for(response)
        results = response.get("results")
        if not isinstance(results, list) or len(results) != len(prompts):
            raise BridgeError(f"the host sent a malformed answer to {caller}")
        return results

    def handoff(self, context: object, caller: str) -> dict[str, str] | None:
        """Write a child run's context to a file the host takes over, as the root's context is.

        Returns ``None`` when nothing needs writing (no context, or a replay, which answers
        from the record).
        """
        if context is None:
            return None
        if isinstance(context, tuple):
            context = list(context)
        if not isinstance(context, (str, list, dict)):
            raise TypeError(
                f"{caller}: context must be a str, a list or a dict, not {type(context).__name__}"
            )
        if self.handoff_dir is None:
            if isinstance(self.transport, SocketTransport):
                # A live host that gave no hand-off folder (a kernel on a gateway) cannot read
                # the file: dropping the context silently would answer another question.
                raise BridgeError(
                    f"{caller}: this kernel cannot hand a context to the host (it runs on a "
                    "gateway); put the text in the prompt instead"
                )
            return None  # a replay answers from the record
        if isinstance(context, str):
            text, kind = context, "text"
        else:
            try:
                text = json.dumps(context, ensure_ascii=False)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{caller}: context must hold JSON values only ({exc})") from None
            kind = "json"
        os.makedirs(self.handoff_dir, exist_ok=True)
        suffix = "txt" if kind == "text" else "json"
        path = os.path.join(self.handoff_dir, f".handoff-{os.urandom(8).hex()}.{suffix}")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        return {"path": path, "kind": kind}

    def final(self, value: str, via: str) -> None:
        self._check_running(via)
        if self.transport is None:
            print(f"Final answer (no rlm-kernel host is connected to record it):\n{value}")
            return
        payload = {"value": value, "via": via, "cell": self.cells.of_caller()}
        _raise_for(self.transport.request("final", payload))


def _check_model(model: object, caller: str) -> None:
    if model is not None and not isinstance(model, str):
        raise TypeError(f"{caller}: model must be a str or None, not {type(model).__name__}")


class Answer(str):
    """A sub-model's answer: a ``str`` that also says why the model stopped.

    ``stop_reason`` is the model API's own word (``end_turn``, ``stop``, ``max_tokens``,
    ``length``, ...) or ``None`` when it was not recorded; ``truncated`` is true when the answer
    was cut at the sub-model's output-token cap. Copies and pickles are plain ``str``.
    """

    stop_reason: str | None

    def __new__(cls, text: str, stop_reason: str | None = None) -> Answer:
        answer = super().__new__(cls, text)
        answer.stop_reason = stop_reason
        return answer

    @property
    def truncated(self) -> bool:
        """Whether the answer was cut at the output-token cap (it may end mid-sentence)."""
        return self.stop_reason in _CUT_OFF

    def __reduce__(self) -> tuple[Any, ...]:
        return (str, (str(self),))


_CUT_OFF = frozenset({"max_tokens", "length"})  # Anthropic's and OpenAI's words for a cut reply


def _answer(result: dict[str, Any]) -> Answer:
    stop = result.get("stop_reason")
    return Answer(str(result["ok"]), None if stop is None else str(stop))


def _one_answer(result: dict[str, Any]) -> str:
    if "ok" in result:
        return _answer(result)
    cls, message = _error_of(result.get("error"))
    raise cls(message)


def _batch_answers(results: list[dict[str, Any]], count: int) -> list[str]:
    """The answers of a batch, or the first failure's class with ``.partial`` and ``.errors``."""
    answers: list[str | None] = []
    errors: dict[int, str] = {}
    budget = False
    for i, result in enumerate(results):
        if "ok" in result:
            answers.append(_answer(result))
            continue
        cls, message = _error_of(result.get("error"))
        answers.append(None)
        errors[i] = message
        budget = budget or cls is BudgetExceeded
    if not errors:
        return answers  # type: ignore[return-value]
    first = min(errors)
    prompts = f"{count} prompt{'s' * (count != 1)}"
    message = f"{len(errors)} of {prompts} failed; first (#{first}): {errors[first]}"
    raise (BudgetExceeded if budget else SubcallError)(message, partial=answers, errors=errors)


def _prompt_list(prompts: object, caller: str) -> list[str]:
    if isinstance(prompts, (str, bytes)):
        single = caller.replace("_batched", "")
        raise TypeError(
            f"{caller} takes a list of prompts, not a single {type(prompts).__name__}; "
            f"for one prompt use {single}(prompt)"
        )
    try:
        batch = list(prompts)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{caller} takes a list of prompts, not {type(prompts).__name__}") from None
    for i, p in enumerate(batch):
        if not isinstance(p, str):
            raise TypeError(f"{caller}: prompt #{i} is a {type(p).__name__}, not a str")
    return batch


def _context_as_text(context: object) -> str:
    if isinstance(context, str):
        return context
    try:
        return json.dumps(context, ensure_ascii=False, indent=1)
    except (TypeError, ValueError):
        return str(context)


def _build_functions(host: _Host, namespace: dict[str, Any]) -> dict[str, Callable[..., Any]]:
    """Make the functions installed into the namespace, bound to ``host`` and ``namespace``."""

    def llm_query(prompt: str, model: str | None = None) -> str:
        """Ask a sub-model one question and return its answer.

        The sub-model sees only ``prompt``, not your variables: put every piece of text it needs
        into the prompt. A sub-model reads about as much as you can, so hand it chunks rather
        than the whole context.

        Args:
            prompt: the whole question, with the text it is about.
            model: a different sub-model by name; ``None`` uses the run's sub-model.

        Returns:
            The sub-model's answer, a ``str`` with ``.truncated`` (true when it was cut at the
            sub-model's output-token cap) and ``.stop_reason``.

        Raises:
            SubcallError: the sub-call failed after the host's retries.
            BudgetExceeded: the run's sub-call, cost or time budget is used up.
        """
        if not isinstance(prompt, str):
            raise TypeError(
                f"llm_query takes one prompt as a str, not {type(prompt).__name__}; "
                "for several prompts use llm_query_batched(list_of_prompts)"
            )
        _check_model(model, "llm_query")
        (result,) = host.subcall("llm", [prompt], model, "llm_query")
        return _one_answer(result)

    def llm_query_batched(prompts: Iterable[str], model: str | None = None) -> list[str]:
        """Ask a sub-model many questions at once; the answers come back in the same order.

        The host runs the prompts concurrently, so this is much faster than calling
        ``llm_query`` in a loop. Each prompt is answered on its own, seeing nothing else.

        Args:
            prompts: a list of prompts (str).
            model: a different sub-model by name; ``None`` uses the run's sub-model.

        Returns:
            One answer per prompt, in order.

        Raises:
            SubcallError: some prompts failed; ``.partial`` holds the answers in order (``None``
                where a prompt failed) and ``.errors`` maps each failed index to its message.
            BudgetExceeded: the budget ran out during the batch (same ``.partial``/``.errors``).
        """
        batch = _prompt_list(prompts, "llm_query_batched")
        _check_model(model, "llm_query_batched")
        if not batch:
            return []
        results = host.subcall("llm", batch, model, "llm_query_batched")
        return _batch_answers(results, len(batch))

    def rlm_query(prompt: str, context: object = None) -> str:
        """Hand a question to a child RLM: a run of its own, with its own REPL, over ``context``.

        The child gets ``prompt`` as its question and ``context`` (a str, list or dict from
        here, handed over by file; by default the prompt itself) as its ``context``, works
        through it in steps as you do, and its final answer is returned. Children share the
        run's budgets. At the maximum depth there are no children: the call is a plain
        sub-model call (``llm_query``), with the context appended to the prompt.

        Raises:
            SubcallError: the child run failed or ended without an answer.
            BudgetExceeded: the run's sub-call, cost or time budget is used up.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"rlm_query takes the prompt as a str, not {type(prompt).__name__}")
        handoff = host.handoff(context, "rlm_query")
        (result,) = host.subcall("rlm", [prompt], None, "rlm_query", [handoff])
        return _one_answer(result)

    def rlm_query_batched(
        prompts: Iterable[str], contexts: Iterable[object] | None = None
    ) -> list[str]:
        """Run several child RLMs at once (see ``rlm_query``); answers come back in order.

        Args:
            prompts: one question per child.
            contexts: one context per child (``None`` entries, or no list, give each child its
                prompt as context).

        Raises:
            SubcallError: some children failed; ``.partial`` holds the answers in order
                (``None`` where one failed) and ``.errors`` maps each failed index to its message.
            BudgetExceeded: the budget ran out during the batch (same ``.partial``/``.errors``).
        """
        batch = _prompt_list(prompts, "rlm_query_batched")
        if contexts is None:
            given: list[object] = [None] * len(batch)
        else:
            if isinstance(contexts, (str, bytes, dict)):
                raise TypeError("rlm_query_batched: contexts must be a list, one per prompt")
            given = list(contexts)
            if len(given) != len(batch):
                raise ValueError(
                    f"rlm_query_batched: {len(batch)} prompts but {len(given)} contexts"
                )
        if not batch:
            return []
        handoffs = [host.handoff(c, "rlm_query_batched") for c in given]
        results = host.subcall("rlm", batch, None, "rlm_query_batched", handoffs)
        return _batch_answers(results, len(batch))

    def FINAL(x: object) -> None:
        """Give the final answer and finish the run: ``FINAL(answer)``; ``str(x)`` is sent."""
        host.final(str(x), "FINAL")

    def FINAL_VAR(name_or_value: object) -> None:
        """Finish the run with the value of a variable: ``FINAL_VAR("result")``.

        A str that is a variable name sends that variable's value (as str). A str that is not a
        valid name is taken as the answer itself, and so is any other value (sent as ``str``).

        Raises:
            NameError: the name is valid but no such variable exists (similar names are listed).
        """
        if not isinstance(name_or_value, str):
            host.final(str(name_or_value), "FINAL_VAR")
            return
        name = name_or_value.strip()
        if not name.isidentifier() or keyword.iskeyword(name):
            host.final(name_or_value, "FINAL_VAR")
            return
        if name not in namespace:
            similar = difflib.get_close_matches(name, _user_variables(namespace), n=5)
            hint = (
                f"; did you mean {', '.join(similar)}?"
                if similar
                else "; assign it first, or pass the answer itself: FINAL(answer)"
            )
            raise NameError(f"FINAL_VAR: no variable named {name!r}{hint}")
        host.final(str(namespace[name]), "FINAL_VAR")

    def SHOW_VARS() -> None:
        """Print the variables you have made: name, type and size (length, or chars for str)."""
        names = _user_variables(namespace)
        if not names:
            print("No variables yet.")
            return
        rows = [("name", "type", "size")]
        rows += [(n, type(namespace[n]).__name__, _size_of(namespace[n])) for n in names]
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        for n, t, s in rows:
            print(f"{n:<{widths[0]}}  {t:<{widths[1]}}  {s}".rstrip())

    return {
        "llm_query": llm_query,
        "llm_query_batched": llm_query_batched,
        "rlm_query": rlm_query,
        "rlm_query_batched": rlm_query_batched,
        "FINAL": FINAL,
        "FINAL_VAR": FINAL_VAR,
        "SHOW_VARS": SHOW_VARS,
    }


# Every name install() binds; a run in the user's own kernel (``%%rlm --here``) puts back the
# user's values of these when it ends.
INSTALLED_NAMES = (
    "context",
    "answer",
    "llm_query",
    "llm_query_batched",
    "rlm_query",
    "rlm_query_batched",
    "FINAL",
    "FINAL_VAR",
    "SHOW_VARS",
    "SubcallError",
    "BudgetExceeded",
    "ReplayMiss",
    "_rlm_functions",
    "_rlm_host",
    "_rlm_hooks",
)
_HIDDEN_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython"})


def _user_variables(namespace: dict[str, Any]) -> list[str]:
    own = namespace.get("_rlm_functions", {})
    return sorted(
        name
        for name, value in namespace.items()
        if not name.startswith("_")
        and name not in _HIDDEN_NAMES
        and not isinstance(value, types.ModuleType)
        and own.get(name) is not value
    )


def _size_of(value: object) -> str:
    if isinstance(value, str):
        return f"{len(value):,} chars"
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value):,} bytes"
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple):
        return f"shape {shape}"
    try:
        return f"{len(value):,} items"  # type: ignore[arg-type]
    except Exception:
        return ""


# --------------------------------------------------------------------------- host tools


class ToolError(RuntimeError):
    """A host tool raised, or could not be called (a result that is not JSON, a time limit).

    Attributes:
        tool: the tool's name.
        type: the class name of the exception raised on the host (``ValueError``, ...).
        message: that exception's message.
    """

    def __init__(self, message: str, *, tool: str | None = None, type: str | None = None) -> None:
        # "ValueError: ..." as a foreign exception's sub-call error reads.
        super().__init__(f"{type}: {message}" if type else message)
        self.tool = tool
        self.type = type
        self.message = message


ERROR_TYPES["ToolError"] = ToolError


def _call_tool(host: _Host, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Call the host tool ``name`` (JSON arguments) and return its JSON result, decoded."""
    if host.transport is None:
        raise BridgeError(f"{name} is a host tool, and this kernel is not connected to a host")
    payload = {"name": name, "args": args, "kwargs": kwargs, "cell": host.cells.of_caller()}
    response = host.transport.request("tool", payload)
    error = response.get("error")
    if isinstance(error, dict) and error.get("type") == "ToolError":
        raise ToolError(str(error.get("message") or ""), tool=name, type=error.get("cause"))
    _raise_for(response)
    if not isinstance(response.get("ok"), str):
        raise BridgeError(f"the host sent a malformed answer to the tool {name}")
    return json.loads(response["ok"])


class _AnswerWatch:
    """After each cell, send ``answer["content"]`` once ``answer["ready"]`` is true."""

    def __init__(self, host: _Host, namespace: dict[str, Any]) -> None:
        self._host = host
        self._namespace = namespace
        self._sent: str | None = None

    def __call__(self, *args: object) -> None:
        answer = self._namespace.get("answer")  # looked up again: the model may rebind it
        if not isinstance(answer, dict) or not answer.get("ready"):
            return
        value = str(answer.get("content"))
        if value != self._sent:
            self._sent = value
            self._host.final(value, "answer")


def install(
    namespace: dict[str, Any],
    transport: Transport | None,
    *,
    context_path: str | None = None,
    context_kind: str = "text",
    shell: Any = None,
    handoff_dir: str | None = None,
) -> None:
    """Put ``context``, ``llm_query`` & co., ``FINAL*``, ``answer``, ``SHOW_VARS`` in a namespace.

    The exception classes ``SubcallError``, ``BudgetExceeded`` and ``ReplayMiss`` go in too.

    Args:
        namespace: where the model's code runs (the IPython user namespace in the kernel).
        transport: how requests reach the host; ``None`` leaves the functions unconnected
            (sub-calls raise :class:`BridgeError`, ``FINAL`` only prints).
        context_path: a file to load as ``context`` through :func:`load_context`.
        context_kind: ``"text"`` or ``"json"``.
        shell: the IPython shell; when given, ``post_run_cell`` watches ``answer`` and the
            cell hooks tie each request to the cell that made it.
        handoff_dir: where ``rlm_query`` writes the contexts it hands to child runs; ``None``
            writes none (a replay answers children from the record).
    """
    if context_path is not None:
        namespace["context"] = load_context(context_path, context_kind)
    cells = _Cells()
    host = _Host(transport, cells, handoff_dir)
    functions = _build_functions(host, namespace)
    # The exceptions too, so the model's code can catch them by name.
    functions.update(
        SubcallError=SubcallError, BudgetExceeded=BudgetExceeded, ReplayMiss=ReplayMiss
    )
    namespace.update(functions)
    namespace["_rlm_functions"] = functions
    # What host tools call, and raise (installed by name later: rlm_kernel/_tools_kernel.py).
    namespace["_rlm_call_tool"] = functools.partial(_call_tool, host)
    namespace["_rlm_ToolError"] = ToolError
    namespace["_rlm_host"] = host
    namespace["answer"] = {"content": None, "ready": False}
    if shell is not None:
        for event, hook in namespace.get("_rlm_hooks", []):
            # They may belong to another shell or be gone already.
            with contextlib.suppress(ValueError):
                shell.events.unregister(event, hook)
        hooks = [
            ("pre_run_cell", cells.pre_run_cell),
            ("post_run_cell", cells.post_run_cell),
            ("post_run_cell", _AnswerWatch(host, namespace)),
        ]
        for event, hook in hooks:
            shell.events.register(event, hook)
        namespace["_rlm_hooks"] = hooks
        cells.watch_threads()


def bootstrap_code(
    runtime_file: str,
    *,
    address: str | None,
    token: str | None,
    context_path: str | None,
    context_kind: str = "text",
    handoff_dir: str | None = None,
) -> str:
    """Python source that loads this file into a fresh kernel and installs the functions.

    Execute it with ``silent=True, store_history=False`` so the token stays out of the history.
    """
    settings = {
        "runtime_file": runtime_file,
        "address": address,
        "token": token,
        "context_path": context_path,
        "context_kind": context_kind,
        "handoff_dir": handoff_dir,
    }
    # The settings travel as one JSON literal, decoded in the kernel: no value is spliced into
    # the code itself.
    return (
        "def _rlm_bootstrap(settings):\n"
        "    import importlib.util, json, sys\n"
        "    s = json.loads(settings)\n"
        f"    spec = importlib.util.spec_from_file_location({MODULE_NAME!r}, s['runtime_file'])\n"
        "    module = importlib.util.module_from_spec(spec)\n"
        "    sys.modules[spec.name] = module\n"
        "    spec.loader.exec_module(module)\n"
        "    address = s['address']\n"
        "    transport = module.SocketTransport(address, s['token']) if address else None\n"
        "    module.install(get_ipython().user_ns, transport, shell=get_ipython(),\n"
        "                   context_path=s['context_path'], context_kind=s['context_kind'],\n"
        "                   handoff_dir=s['handoff_dir'])\n"
        f"_rlm_bootstrap({json.dumps(json.dumps(settings))})\n"
        "del _rlm_bootstrap\n"
    )
