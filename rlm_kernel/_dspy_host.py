"""The host side of the DSPy interpreter: DSPy's tools behind the bridge, its inputs, its steps.

- :class:`ToolHost` is the bridge's ``SubcallHandler``: the kernel's ``llm_query(prompt)`` calls
  DSPy's ``llm_query`` tool; any other tool comes as the bridge's ``tool`` request (the same
  one as ``RLM(tools=...)``) and gets the JSON of its result. Each call is recorded for the cell
  that made it, and runs in the context (``dspy.context`` settings) of the DSPy call that ran
  the cell.
- :class:`Inputs` keeps the variables DSPy passes, JSON-ready, by key, for the context file.
- :data:`TAP`, a DSPy callback, sees each predictor's ``reasoning`` and ``code``, so a step's
  markdown can show why the model wrote the code, and which LM answered each ``llm_query``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import inspect
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import dspy
from dspy.primitives.code_interpreter import CodeInterpreterError
from dspy.utils.callback import BaseCallback

from .bridge import SubcallRequest, ToolRequest
from .errors import ToolError
from .record import ErrorRecord, prompt_sha256
from .tools import request_text

PREVIEW_CHARS = 200
_IMMUTABLE = (str, bytes, int, float, bool, type(None))
_RECORD: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "rlm_kernel_dspy_record", default=None
)


# --------------------------------------------------------------------------- tool calls


def _invoke(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], record: dict) -> Any:
    """Call a DSPy tool as DSPy does (keyword arguments), awaiting an async one."""
    _RECORD.set(record)
    if args:
        # DSPy's tool wrappers take keyword arguments only; their signature names them.
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):
            signature = None
        if signature is not None:
            bound = signature.bind(*args, **kwargs)
            kinds = {p.kind for p in signature.parameters.values()}
            if not kinds & {inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL}:
                args, kwargs = [], {}
                for name, value in bound.arguments.items():
                    if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                        kwargs.update(value)
                    else:
                        kwargs[name] = value
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run(_wait(result))
    return result


async def _wait(awaitable: Any) -> Any:
    return await awaitable


def _to_json(name: str, value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        pass
    try:
        from pydantic_core import to_jsonable_python

        return json.dumps(to_jsonable_python(value), ensure_ascii=False)
    except Exception:
        raise TypeError(
            f"the tool {name!r} returned a {type(value).__name__}, which cannot reach the kernel: "
            "tools must return JSON values"
        ) from None


class ToolHost:
    """Runs DSPy's tools for the kernel and records every call (a ``bridge.SubcallHandler``).

    Args:
        tools: the interpreter's live tool dict.
        executor: threads for the tools, which block.
    """

    def __init__(self, tools: dict[str, Callable[..., Any]], executor: concurrent.futures.Executor):
        self.tools = tools
        self.executor = executor
        self.calls = 0
        self.submitted: str | None = None
        self.sub_model: str | None = None
        self._context = contextvars.copy_context()
        self._records: list[dict[str, Any]] = []

    def use_context(self, context: contextvars.Context) -> None:
        """Run the tools in ``context``: the DSPy call's settings (``dspy.context(lm=...)``)."""
        self._context = context

    def begin_cell(self) -> None:
        """Start collecting the calls of a new cell."""
        self._records = []
        self.submitted = None

    def take_records(self) -> list[dict[str, Any]]:
        """The calls the cell made, in the order they were made."""
        records, self._records = self._records, []
        return records

    async def subcall(self, request: SubcallRequest) -> str:
        """Answer the kernel's ``llm_query(prompt)`` with DSPy's ``llm_query`` tool."""
        if request.model is not None:
            raise LookupError(
                f"this kernel's host runs DSPy's tools, not a model named {request.model!r}"
            )
        return await self._call("llm_query", [], {"prompt": request.prompt}, plain=True)

    async def tool(self, request: ToolRequest) -> str:
        """Run one of DSPy's tools by name; the answer is the JSON of its result."""
        return await self._call(request.name, request.args, request.kwargs, plain=False)

    async def _call(
        self, name: str, args: list[Any], kwargs: dict[str, Any], *, plain: bool
    ) -> str:
        # A plain llm_query is keyed by its prompt, a tool call by the JSON of the request.
        prompt = kwargs["prompt"] if plain else request_text(name, args, kwargs)
        model = None if plain else name
        self.calls += 1
        record: dict[str, Any] = {
            "id": self.calls,
            "kind": "llm" if model is None else "tool",
            "model": name,
            "tool": name,
            "prompt_sha256": prompt_sha256(prompt),
            "prompt_chars": len(prompt),
            "prompt_preview": prompt[:PREVIEW_CHARS],
            "response": None,
            "latency_s": 0.0,
            "usage": {},
            "cost_usd": None,
            "retries": 0,
            "error": None,
            "child": None,
        }
        # Appended first, so records keep the order in which the calls were made.
        self._records.append(record)
        started = time.monotonic()
        try:
            fn = self.tools.get(name)
            if fn is None:
                raise NameError(f"DSPy gave this interpreter no tool named {name!r}")
            loop = asyncio.get_running_loop()
            # A copy per call: a Context cannot be entered by two threads at once.
            run = self._context.copy().run
            value = await loop.run_in_executor(
                self.executor, run, _invoke, fn, args, kwargs, record
            )
            if model is None:
                if not isinstance(value, str):
                    raise TypeError(f"llm_query returned a {type(value).__name__}, not a str")
                text = value
                if record["model"] != name:  # the tap saw which LM answered
                    self.sub_model = self.sub_model or record["model"]
            else:
                text = _to_json(name, value)
        except Exception as e:
            if not plain and not isinstance(e, ToolError):
                # Any tool's failure reaches the code as ToolError, with the tool's own class.
                e = ToolError(str(e) or type(e).__name__, tool=name, cause=type(e).__name__)
            record["error"] = ErrorRecord.from_exception(e).to_metadata()  # what the code sees
            raise e from None
        finally:
            record["latency_s"] = round(time.monotonic() - started, 4)
        record["response"] = text
        return text

    async def final(self, value: str, *, via: str, cell: str | None = None) -> None:
        """Take ``SUBMIT``'s values (JSON)."""
        self.submitted = value


# --------------------------------------------------------------------------- inputs


@dataclasses.dataclass
class _Held:
    key: str
    value: Any  # the object DSPy passed, to see cheaply that it is the same one next time
    digest: str


class Inputs:
    """The variables DSPy passed to the code, JSON-ready, by key.

    A name keeps its key while DSPy passes the same value; a new value gets a new key
    (``name#2``), so the context file holds every value any cell saw.
    """

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self._held: dict[str, _Held] = {}

    @property
    def names(self) -> list[str]:
        """The variable names seen so far."""
        return list(self._held)

    def add(self, variables: dict[str, Any]) -> tuple[dict[str, str], bool]:
        """Take one execute's variables; return name → key, and whether any value is new.

        Raises:
            CodeInterpreterError: a value cannot be turned into JSON.
        """
        keys: dict[str, str] = {}
        new = False
        for name, value in variables.items():
            held = self._held.get(name)
            if held is not None and held.value is value and isinstance(value, _IMMUTABLE):
                keys[name] = held.key
                continue
            plain = _plain(name, value)
            digest = prompt_sha256(
                plain if isinstance(plain, str) else json.dumps(plain, sort_keys=True)
            )
            if held is not None and held.digest == digest:
                held.value = value
                keys[name] = held.key
                continue
            key, n = name, 1
            while key in self.values:
                n += 1
                key = f"{name}#{n}"
            self.values[key] = plain
            self._held[name] = _Held(key, value, digest)
            keys[name] = key
            new = True
        return keys, new


def _plain(name: str, value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        pass
    try:
        from pydantic_core import to_jsonable_python

        plain = to_jsonable_python(value)
        json.dumps(plain)
        return plain
    except Exception:
        raise CodeInterpreterError(
            f"the variable {name!r} is a {type(value).__name__}, which cannot be passed to the "
            "kernel: variables must be JSON values (str, numbers, bool, None, lists, dicts)"
        ) from None


# --------------------------------------------------------------------------- the model's steps


@dataclasses.dataclass(frozen=True)
class Action:
    """One predictor reply with ``reasoning`` and ``code``: a step of DSPy's RLM."""

    code: str
    reasoning: str
    model: str | None
    latency_s: float


_FENCE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.S)


def _code_forms(raw: str) -> set[str]:
    forms = {raw.strip()}
    found = _FENCE.search(raw)
    if found:
        forms.add(found.group(1).strip())
    return forms


class _Tap(BaseCallback):
    """A DSPy callback: predictor replies with ``code`` (steps) and the LM of each tool call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: dict[str, tuple[float, str | None]] = {}
        self._actions: deque[Action] = deque(maxlen=64)
        self._users = 0

    def attach(self) -> None:
        """Make sure DSPy calls this callback in the current context; count one more user."""
        callbacks = dspy.settings.get("callbacks")
        with self._lock:
            if isinstance(callbacks, list) and self not in callbacks:
                callbacks.append(self)

    def detach(self) -> None:
        """Called once per :meth:`attach`er at its end; the last one takes the callback out."""
        callbacks = dspy.settings.get("callbacks")
        with self._lock:
            self._users = max(0, self._users - 1)
            if not self._users and isinstance(callbacks, list) and self in callbacks:
                callbacks.remove(self)

    def count(self) -> None:
        """One more interpreter relies on the callback."""
        with self._lock:
            self._users += 1

    def take(self, code: str) -> Action | None:
        """The latest reply whose code is ``code``, removed from the tap; ``None`` if none."""
        wanted = code.strip()
        with self._lock:
            for action in reversed(self._actions):
                if wanted in _code_forms(action.code):
                    self._actions.remove(action)
                    return action
        return None

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if isinstance(instance, dspy.Predict):
            lm = getattr(instance, "lm", None) or dspy.settings.get("lm")
            with self._lock:
                self._started[call_id] = (time.monotonic(), getattr(lm, "model", None))

    def on_module_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        with self._lock:
            started = self._started.pop(call_id, None)
        if started is None or outputs is None:
            return
        code = getattr(outputs, "code", None)
        reasoning = getattr(outputs, "reasoning", None)
        if isinstance(code, str) and isinstance(reasoning, str):
            action = Action(code, reasoning, started[1], time.monotonic() - started[0])
            with self._lock:
                self._actions.append(action)

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        record = _RECORD.get()
        model = getattr(instance, "model", None)
        if record is not None and isinstance(model, str):
            record["model"] = model


TAP = _Tap()
