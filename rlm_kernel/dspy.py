"""DSPy's ``CodeInterpreter`` on a real Jupyter kernel: every ``dspy.RLM`` run becomes a notebook.

Plug it in the way DSPy documents for interpreters::

    import dspy
    from rlm_kernel.dspy import KernelInterpreter

    rlm = dspy.RLM(
        "context, query -> answer",
        interpreter_factory=KernelInterpreter.factory(notebook="runs/x.ipynb"),
    )
    # or for every code-running module: dspy.configure(interpreter_factory=KernelInterpreter)

Each interpreter owns one kernel (``rlm_kernel.kernel.KernelSession``) and one run notebook
(``rlm_kernel.record.Recorder``): per ``execute`` a step with the model's reasoning as markdown,
the interpreter's setup cell (DSPy's tools, ``SUBMIT``, the inputs) and the code with its real
outputs. DSPy's tools run on the host, reached from the kernel through the rlm-kernel bridge, and
every call is recorded on its cell, so ``rlm-kernel replay`` runs the notebook again without a key.

DSPy calls are synchronous; the kernel and the bridge are asynchronous. Each interpreter runs them
on a private event loop in a thread of its own, and every wait for it has a deadline.
"""

from __future__ import annotations

import inspect
import keyword
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

try:
    from dspy.primitives.code_interpreter import CodeInterpreterError
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "rlm_kernel.dspy needs DSPy 3.4 or later: pip install 'rlm-kernel[dspy]'"
    ) from e

from ._dspy_host import TAP
from ._dspy_session import Session

__all__ = ["KernelInterpreter", "KernelInterpreterFactory"]

_RESERVED = frozenset({"SUBMIT", "get_ipython", "__builtins__"})


class KernelInterpreter:
    """A DSPy ``CodeInterpreter`` whose code runs in a Jupyter kernel, recorded as a notebook.

    Follows DSPy's contract: ``tools`` is a mutable dict of host functions callable from the code
    as globals (keyword or positional arguments, JSON in and out); ``output_fields`` types
    ``SUBMIT``; state persists across :meth:`execute` calls until :meth:`shutdown`.

    Args:
        tools: host functions by name (DSPy's RLM adds ``llm_query`` and its own).
        output_fields: ``[{"name": ..., "type": ...}]`` for ``SUBMIT``'s signature.
        notebook: the run notebook to write (default: ``rlm-runs/dspy-<time>-<id>.ipynb``).
        question: what the summary calls the run (default: the program's inputs and outputs).
        kernel_name: the Jupyter kernelspec to start.
        cell_timeout: seconds one execution may run before the kernel is interrupted.
        startup_timeout: seconds the kernel may take to start.
        max_cell_output_bytes: output of one cell kept in the notebook.
        max_concurrency: tool calls run at once on the host.
    """

    execution_instructions = (
        "Code runs in a Jupyter kernel (IPython on CPython) in a separate process. Variables, "
        "imports and functions persist across executions. The tools and SUBMIT are global "
        "functions; tool arguments and results must be JSON values. Each execution shows what a "
        "notebook cell shows: printed text, the value of the last line, errors with their "
        "traceback. A long-running cell is interrupted after its time limit; its variables stay."
    )

    def __init__(
        self,
        tools: Mapping[str, Callable[..., Any]] | None = None,
        output_fields: list[dict[str, Any]] | None = None,
        *,
        notebook: str | Path | None = None,
        question: str | None = None,
        kernel_name: str = "python3",
        cell_timeout: float | None = 300.0,
        startup_timeout: float = 60.0,
        max_cell_output_bytes: int = 1_000_000,
        max_concurrency: int = 16,
    ) -> None:
        for name, value in (("cell_timeout", cell_timeout), ("startup_timeout", startup_timeout)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        self._tools: dict[str, Callable[..., Any]] = dict(tools or {})
        self.output_fields = output_fields
        self.notebook = Path(notebook) if notebook is not None else None
        self.question = question
        self.kernel_name = kernel_name
        self.cell_timeout = cell_timeout
        self.startup_timeout = startup_timeout
        self.max_cell_output_bytes = max_cell_output_bytes
        self.max_concurrency = max_concurrency
        self._session: Session | None = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def tools(self) -> dict[str, Callable[..., Any]]:
        """Host functions the code can call by name; DSPy updates this dict in place."""
        return self._tools

    @classmethod
    def factory(cls, **options: Any) -> KernelInterpreterFactory:
        """A zero-argument callable making a fresh interpreter, for ``interpreter_factory=``.

        Takes the options of the class. Each call numbers its notebook after the first
        (``x.ipynb``, ``x-2.ipynb``, ...), so runs of one program do not overwrite each other.
        """
        return KernelInterpreterFactory(cls, **options)

    def start(self) -> None:
        """Start the kernel and the run notebook; calling it again does nothing.

        Raises:
            CodeInterpreterError: the interpreter was shut down, or its kernel could not start.
        """
        if self._closed:
            raise CodeInterpreterError(
                "this KernelInterpreter has been shut down; create a new one for a new session"
            )
        if self._session is None:
            self._session = Session(self)
            TAP.count()
        TAP.attach()

    def execute(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        """Run ``code`` in the kernel after injecting ``variables``; record it as a step.

        Returns:
            ``FinalOutput`` when the code called ``SUBMIT``; else the text a notebook shows for
            the cell (printed output, the last value), or ``None`` when there is none.

        Raises:
            SyntaxError: the code does not parse.
            CodeExecutionError: the code raised (the message holds its output and traceback),
                or ran past ``cell_timeout`` and was interrupted (its variables stay).
            CodeInterpreterError: the kernel died or hung (the session is over), or the setup
                is wrong (a tool or variable name, a value that is not JSON).
        """
        if not self._lock.acquire(blocking=False):
            raise CodeInterpreterError(
                "this KernelInterpreter is already running code; one interpreter serves one "
                "DSPy run at a time"
            )
        try:
            if not isinstance(code, str):
                raise CodeInterpreterError(f"code must be a str, not {type(code).__name__}")
            tools = _check_names(self._tools, "tool")
            given = dict(variables or {})
            clash = sorted(set(given) & set(tools))
            if clash:
                raise CodeInterpreterError(f"variables cannot replace tools: {', '.join(clash)}")
            _check_names(given, "variable")
            self.start()
            assert self._session is not None
            return self._session.execute(code, given, tools, self.output_fields)
        finally:
            self._lock.release()

    def shutdown(self) -> None:
        """Stop the kernel and finish the notebook; the interpreter cannot be used again."""
        if self._closed:
            return
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            TAP.detach()
            session.close()

    def __call__(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        return self.execute(code, variables)

    def __enter__(self) -> KernelInterpreter:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    @property
    def notebook_path(self) -> Path | None:
        """The notebook being written, once started."""
        return self._session.recorder.path if self._session is not None else self.notebook


class KernelInterpreterFactory:
    """Makes a fresh :class:`KernelInterpreter` per call (DSPy may call it concurrently).

    Made by :meth:`KernelInterpreter.factory`; ``execution_instructions`` tells DSPy's RLM what
    runtime the code gets.
    """

    def __init__(self, cls: type[KernelInterpreter] = KernelInterpreter, **options: Any) -> None:
        try:
            inspect.signature(cls).bind(**options)
        except TypeError as e:
            raise TypeError(f"KernelInterpreter.factory: {e}") from None
        self.cls = cls
        self.options = options
        self.execution_instructions = cls.execution_instructions
        self._made = 0
        self._lock = threading.Lock()

    def __call__(self) -> KernelInterpreter:
        options = dict(self.options)
        with self._lock:
            self._made += 1
            n = self._made
        notebook = options.get("notebook")
        if notebook is not None and n > 1:
            path = Path(notebook)
            options["notebook"] = path.with_name(f"{path.stem}-{n}{path.suffix}")
        return self.cls(**options)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"KernelInterpreter.factory({shown})"


def _check_names(names: Mapping[str, Any], what: str) -> tuple[str, ...]:
    bad = [
        n
        for n in names
        if not isinstance(n, str)
        or not n.isidentifier()
        or keyword.iskeyword(n)
        or n in _RESERVED
        or n.startswith("_rlm")
    ]
    if bad:
        raise CodeInterpreterError(
            f"{what} names must be Python identifiers other than SUBMIT and not starting with "
            f"_rlm; invalid: {', '.join(map(repr, bad))}"
        )
    return tuple(names)
