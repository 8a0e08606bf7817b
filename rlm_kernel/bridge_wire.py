"""The bridge's wire format: frames, the requests a kernel sends and the replies it gets.

The server (:mod:`rlm_kernel.bridge`) speaks it from the host. The kernel's end is
``runtime.py``, which imports nothing of ours and so frames its messages the same way on its own;
the bridge tests drive the one against the other.

Wire protocol
-------------

One connection per kernel, over a Unix socket (the default) or TCP on 127.0.0.1 (for kernels on
another machine, reached through a tunnel). Every message in either direction is one *frame*: a
4-byte big-endian unsigned length followed by that many bytes of UTF-8 JSON holding an object.

1. The kernel's first frame authenticates::

       → {"op": "hello", "token": "<the server's token>"}
       ← {"op": "hello", "ok": true}

   A wrong token (or any other first frame) gets an ``AuthError`` record and the server closes
   the connection. Frames before authentication are limited to 64 KiB, and a connection that
   has not authenticated within ``handshake_timeout`` seconds is closed.

2. After that each request carries an integer ``"id"`` chosen by the kernel, and its response
   echoes it. Responses may arrive in any order, so several requests can be in flight on one
   connection (several threads in the kernel may share it).

   Sub-calls, ``kind`` ``"llm"`` or ``"rlm"`` (``rlm_query``: child runs), each naming the cell
   that made it (``"cell"``, the id the host put on the execute request, or ``null``)::

       → {"id": 7, "op": "subcall", "kind": "llm", "prompts": ["...", ...], "model": null,
          "cell": "step-3-code-1"}
       ← {"id": 7, "results": [{"ok": "answer", "stop_reason": "end_turn"},
                               {"error": {"type": "SubcallError", "message": "...",
                                          "retries": 2}},
                               {"error": {"type": "BudgetExceeded", "message": "...",
                                          "retries": 0}},
                               ...]}

   A ``"rlm"`` request may carry ``"contexts"``: one entry per prompt, ``null`` or
   ``{"path": ..., "kind": "text" | "json"}``, a file the kernel wrote in the run's hand-off
   folder, which the host then owns.

   ``stop_reason`` (optional) is why the model stopped, as its API says it (``max_tokens`` or
   ``length``: the answer was cut at the token cap).

   Results are in prompt order. The prompts of a request run concurrently, and at most
   ``max_concurrency`` sub-calls run at once across all connections of the server. An error is
   always a record ``{type, message, retries}``: ``type`` names the exception the kernel's
   code raises (``rlm_kernel.errors.WIRE_TYPES``).

   A host tool (``RLM(tools=...)``), by name, with JSON arguments; the answer is the JSON
   text of its result (a failure is a ``ToolError`` record whose ``cause`` names the class of
   the tool's exception). Tool calls do not take sub-call slots; the handler bounds them::

       → {"id": 9, "op": "tool", "name": "search", "args": ["q"], "kwargs": {"k": 3},
          "cell": "step-3-code-1"}
       ← {"id": 9, "ok": "[\"result\", 2]"}
       ← {"id": 9, "error": {"type": "ToolError", "message": "...", "retries": 0,
                             "cause": "ValueError"}}

   The final answer, ``via`` ``"FINAL"``, ``"FINAL_VAR"`` or ``"answer"``::

       → {"id": 8, "op": "final", "value": "42", "via": "FINAL", "cell": "step-3-code-1"}
       ← {"id": 8, "ok": true}

   A request the server cannot serve (unknown op, malformed fields, a failing ``final``) gets
   ``{"id": ..., "error": {"type": "ProtocolError" | ..., "message": "...", "retries": 0}}``.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any

from .record import ErrorRecord

__all__ = [
    "Reply",
    "SubcallRequest",
    "ToolRequest",
    "check_request",
    "encode",
    "error_reply",
    "protocol_error",
]

HEADER = struct.Struct(">I")
# The largest first frame: the hello, before the peer has shown it holds the token.
MAX_HELLO_BYTES = 64 * 1024
# A request's id, read from the first bytes of a frame too large to parse.
ID_PREFIX = re.compile(rb'^\{\s*"id"\s*:\s*(-?\d{1,18})\s*[,}]')
KINDS = ("llm", "rlm")
VIAS = ("FINAL", "FINAL_VAR", "answer")


@dataclass(frozen=True)
class SubcallRequest:
    """One prompt of a ``subcall`` request, as the handler gets it.

    Attributes:
        prompt: the prompt.
        kind: ``llm`` or ``rlm``.
        model: the model asked for, or ``None`` for the run's sub-model.
        cell: the id of the cell that made the call, as the kernel sent it.
        context: for ``rlm``, the hand-off file ``{"path", "kind"}`` of the child's context.
        batch: how many prompts came in the same request (``llm_query_batched``).
        shared_prefix: characters at the start of the prompt that every prompt of the batch
            shares (see :func:`rlm_kernel.llm.prompt_cache.shared_prefix`).
    """

    prompt: str
    kind: str = "llm"
    model: str | None = None
    cell: str | None = None
    context: dict[str, str] | None = None
    batch: int = 1
    shared_prefix: int = 0


@dataclass(frozen=True)
class ToolRequest:
    """One ``tool`` request: a host tool by name, with its JSON arguments.

    Attributes:
        name: the tool's name.
        args: positional arguments.
        kwargs: keyword arguments.
        cell: the id of the cell that made the call, as the kernel sent it.
    """

    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    cell: str | None = None


class Reply(str):
    """A sub-call's answer with why the model stopped (``stop_reason``), for the wire."""

    stop_reason: str | None

    def __new__(cls, text: str, stop_reason: str | None = None) -> Reply:
        reply = super().__new__(cls, text)
        reply.stop_reason = stop_reason
        return reply


def encode(message: dict[str, Any]) -> bytes:
    """One frame: the length header, then the message as UTF-8 JSON."""
    body = json.dumps(message).encode("utf-8")
    return HEADER.pack(len(body)) + body


def error_reply(exc: BaseException) -> dict[str, Any]:
    """The error record the kernel's code sees for a host exception."""
    return {"error": ErrorRecord.from_exception(exc).to_metadata()}


def protocol_error(message: str, kind: str = "ProtocolError") -> dict[str, Any]:
    """An error record for a request the server cannot serve (never retried)."""
    return {"error": {"type": kind, "message": message, "retries": 0}}


def check_request(msg: dict[str, Any]) -> str:
    """Return what is wrong with a request, or an empty string."""
    op = msg.get("op")
    if op == "subcall":
        prompts = msg.get("prompts")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            return "'prompts' must be a list of strings"
        if msg.get("kind") not in KINDS:
            return f"'kind' must be one of {', '.join(KINDS)}"
        model = msg.get("model")
        if model is not None and not isinstance(model, str):
            return "'model' must be a string or null"
        if msg.get("cell") is not None and not isinstance(msg.get("cell"), str):
            return "'cell' must be a string or null"
        contexts = msg.get("contexts")
        if contexts is not None:
            if msg.get("kind") != "rlm":
                return "'contexts' goes with kind 'rlm' only"
            if not isinstance(contexts, list) or len(contexts) != len(prompts):
                return "'contexts' must be a list with one entry per prompt"
            for c in contexts:
                if c is not None and not (
                    isinstance(c, dict)
                    and isinstance(c.get("path"), str)
                    and c.get("kind") in ("text", "json")
                ):
                    return "each context must be null or {'path': str, 'kind': 'text'|'json'}"
        return ""
    if op == "final":
        if not isinstance(msg.get("value"), str):
            return "'value' must be a string"
        if msg.get("via") not in VIAS:
            return f"'via' must be one of {', '.join(VIAS)}"
        return ""
    if op == "tool":
        if not isinstance(msg.get("name"), str) or not msg["name"]:
            return "'name' must be a tool's name"
        if not isinstance(msg.get("args"), list):
            return "'args' must be a list"
        kwargs = msg.get("kwargs")
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            return "'kwargs' must be an object"
        if msg.get("cell") is not None and not isinstance(msg.get("cell"), str):
            return "'cell' must be a string or null"
        return ""
    return f"unknown op {op!r}; expected 'subcall', 'tool' or 'final'"
