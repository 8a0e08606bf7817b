"""Host tools: plain Python functions on the host that the model's code calls by name.

``RLM(tools={"search": search})`` (or a list of functions, named by ``__name__``) gives each
function a twin in the kernel (``rlm_kernel/_tools_kernel.py``) taking the same arguments. A
call travels over the bridge as a ``tool`` request with JSON arguments, runs here where files,
databases and keys are (an ``async`` function on the event loop, any other in a thread of a
small pool), and its JSON result goes back. Calls are bounded: at most ``max_concurrency`` run
at once and each has a deadline (``Limits.tool_timeout``). They are no model calls: they spend
no tokens and no money and do not count against ``max_subcalls``.

A call is recorded on its cell like a sub-call (kind ``tool``), keyed by the digest of its
:func:`request_text`, so a replay answers it from the record without calling the function.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import inspect
import json
import keyword
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ToolError, UsageError
from .runtime import INSTALLED_NAMES

__all__ = ["ToolBox", "ToolsInput", "kernel_setup", "load_tool", "request_text"]

ToolsInput = Mapping[str, Callable[..., Any]] | Sequence[Callable[..., Any]] | None
DOC_CHARS = 600
# Names the kernel already gives the model's code: a tool must not hide them.
_RESERVED = frozenset(n for n in INSTALLED_NAMES if not n.startswith("_")) | {"ToolError"}


def request_text(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """The canonical JSON text of one tool call: what its record's digest is taken of."""
    return json.dumps(
        {"tool": name, "args": list(args), "kwargs": dict(kwargs)},
        sort_keys=True,
        ensure_ascii=False,
    )


def kernel_setup(specs: Sequence[Mapping[str, Any]]) -> str:
    """Setup code that installs the tools' kernel functions, to run after the runtime's."""
    if not specs:
        return ""
    source = (Path(__file__).parent / "_tools_kernel.py").read_text(encoding="utf-8")
    # The specs travel as one JSON literal, decoded in the kernel: nothing is spliced into code.
    return (
        "def _rlm_tools_boot(source, specs):\n"
        "    import json\n"
        "    module = {'__name__': 'rlm_kernel_tools'}\n"
        "    exec(compile(source, 'rlm_kernel_tools.py', 'exec'), module)\n"
        "    module['install'](get_ipython().user_ns, json.loads(specs))\n"
        f"_rlm_tools_boot({source!r}, {json.dumps(json.dumps(list(specs)))})\n"
        "del _rlm_tools_boot\n"
    )


def load_tool(spec: str) -> Callable[..., Any]:
    """Import ``module:function`` (``--tool``); the function is named by its ``__name__``.

    Raises:
        UsageError: the spec is malformed, the module does not import or has no such callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--tool takes MODULE:FUNCTION, not {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # the user's module: any error in it is theirs to fix
        raise UsageError(f"--tool {spec}: cannot import {module_name}: {e}") from None
    value: Any = module
    for part in attr.split("."):
        value = getattr(value, part, None)
        if value is None:
            raise UsageError(f"--tool {spec}: {module_name} has no attribute {attr!r}")
    if not callable(value):
        raise UsageError(f"--tool {spec}: {attr} is a {type(value).__name__}, not a function")
    return value


def _describe_params(signature: inspect.Signature) -> list[dict[str, Any]]:
    params = []
    for p in signature.parameters.values():
        entry: dict[str, Any] = {"name": p.name, "kind": p.kind.name}
        if p.annotation is not inspect.Parameter.empty:
            entry["annotation"] = inspect.formatannotation(p.annotation)
        if p.default is not inspect.Parameter.empty:
            entry["default"] = repr(p.default)
        params.append(entry)
    return params


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        # Annotations as written, also in modules with ``from __future__ import annotations``.
        return inspect.signature(fn, eval_str=True)
    except (TypeError, ValueError):
        return None  # a builtin without a signature: called as given
    except Exception:  # an annotation that does not evaluate: keep it as text
        try:
            return inspect.signature(fn)
        except (TypeError, ValueError):
            return None


class _Tool:
    """One host function with what the kernel and the prompt show of it."""

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise UsageError(f"a tool's name must be a Python identifier, not {name!r}")
        if name in _RESERVED or name.startswith("_"):
            raise UsageError(
                f"a tool cannot be named {name!r}: the kernel uses that name; rename the tool"
            )
        if not callable(fn):
            raise UsageError(f"the tool {name!r} is a {type(fn).__name__}, not a function")
        self.name = name
        self.fn = fn
        self.signature = _signature(fn)
        # A callable object counts as async when its __call__ is a coroutine function.
        call = fn.__call__ if not inspect.isroutine(fn) else None
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)
        self.doc = inspect.cleandoc(inspect.getdoc(fn) or "")

    def spec(self) -> dict[str, Any]:
        sig = self.signature
        params = (
            _describe_params(sig)
            if sig is not None
            else [
                {"name": "args", "kind": "VAR_POSITIONAL"},
                {"name": "kwargs", "kind": "VAR_KEYWORD"},
            ]
        )
        spec: dict[str, Any] = {"name": self.name, "doc": self.doc, "params": params}
        if sig is not None and sig.return_annotation is not inspect.Signature.empty:
            spec["returns"] = inspect.formatannotation(sig.return_annotation)
        return spec

    def header(self) -> str:
        sig = self.signature
        text = str(sig) if sig is not None else "(*args, **kwargs)"
        return f"{self.name}{text}"


class ToolBox:
    """The host tools of a run tree: their specs, and calls with bounded time and concurrency.

    Args:
        tools: a mapping name → function, or a list of functions (named by ``__name__``).
        timeout: seconds one call may take (``None``: no deadline of its own; the cell's
            time limit still applies).
        max_concurrency: calls running at once; sync functions run in as many threads.

    Raises:
        UsageError: a name is not an identifier or is one the kernel uses, a value is not
            callable, or two functions of a list share a name.
    """

    def __init__(
        self, tools: ToolsInput = None, *, timeout: float | None = 60.0, max_concurrency: int = 8
    ) -> None:
        self.timeout = timeout
        self.max_concurrency = max(1, max_concurrency)
        self._tools: dict[str, _Tool] = {}
        items: list[tuple[str, Callable[..., Any]]]
        if tools is None:
            items = []
        elif isinstance(tools, Mapping):
            items = list(tools.items())
        elif isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
            raise UsageError("tools must be a dict of name → function or a list of functions")
        else:
            items = [(getattr(fn, "__name__", repr(fn)), fn) for fn in tools]
        for name, fn in items:
            if name in self._tools:
                raise UsageError(f"two tools are named {name!r}; pass a dict to name them")
            self._tools[name] = _Tool(name, fn)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None

    def __bool__(self) -> bool:
        return bool(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        """The tools' names, in the order given."""
        return list(self._tools)

    def specs(self) -> list[dict[str, Any]]:
        """What the kernel needs to define each tool (and the notebook keeps, for replay)."""
        return [t.spec() for t in self._tools.values()]

    def describe(self) -> str:
        """The tools for the system prompt: one entry per tool, signature and docstring."""
        lines = []
        for tool in self._tools.values():
            doc = tool.doc if len(tool.doc) <= DOC_CHARS else tool.doc[: DOC_CHARS - 1] + "…"
            body = f"\n  {doc.replace(chr(10), chr(10) + '  ')}" if doc else ""
            lines.append(f"- `{tool.header()}`{body}")
        return "\n".join(lines)

    async def call(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> str:
        """Run one call and return its result as JSON text.

        Raises:
            ToolError: no such tool, the arguments do not fit its signature, it raised, it
                took longer than the deadline, or its result is not a JSON value.
        """
        tool = self._tools.get(name)
        if tool is None:
            known = ", ".join(self._tools) or "none"
            raise ToolError(
                f"no host tool named {name!r} (tools: {known})", tool=name, cause="NameError"
            )
        if tool.signature is not None:
            try:
                tool.signature.bind(*args, **kwargs)
            except TypeError as e:
                raise ToolError(str(e), tool=name, cause="TypeError") from None
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrency)
        async with self._slots:
            try:
                value = await self._run(tool, args, kwargs)
            except asyncio.TimeoutError:
                raise ToolError(
                    f"the call took longer than {self.timeout:g} s (tool_timeout)",
                    tool=name,
                    cause="TimeoutError",
                ) from None
            except Exception as e:
                raise ToolError(
                    str(e) or type(e).__name__, tool=name, cause=type(e).__name__
                ) from e
        return _to_json(name, value)

    async def _run(self, tool: _Tool, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if tool.is_async:
            work: Any = tool.fn(*args, **kwargs)
        else:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    self.max_concurrency, thread_name_prefix="rlm-tool"
                )
            loop = asyncio.get_running_loop()
            work = loop.run_in_executor(self._executor, functools.partial(tool.fn, *args, **kwargs))
        if self.timeout is None:
            value = await work
        else:
            # A thread cannot be stopped: past the deadline its result is dropped, and the
            # pool's bound keeps such threads from piling up.
            value = await asyncio.wait_for(work, self.timeout)
        if inspect.isawaitable(value):  # a sync function that returned a coroutine
            value = await asyncio.wait_for(value, self.timeout)
        return value

    def close(self) -> None:
        """Let the threads go (a call still running finishes in the background)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _to_json(name: str, value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        if isinstance(value, float) and not math.isfinite(value):
            what = f"the number {value}"
        else:
            what = f"a {type(value).__name__}"
        raise ToolError(
            f"it returned {what}, which is not JSON ({e}); a tool must return str, int, float, "
            "bool, None, or lists and dicts (str keys) of them",
            tool=name,
            cause="TypeError",
        ) from None
