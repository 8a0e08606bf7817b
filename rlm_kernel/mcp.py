"""An MCP server: coding agents ask questions over files too long to read, and get a notebook.

``rlm-kernel mcp`` serves two tools over stdio (or streamable HTTP) with the official ``mcp``
SDK:

- ``ask(question, paths, limits)`` runs an RLM over the files or folders at ``paths`` (one path
  is the context itself, several make a list) and returns the answer, the status, the cost and
  the path of the run notebook;
- ``view(notebook)`` returns the summary of a run notebook: the run, then one line per step.

Each ``ask`` is ``rlm_kernel.RLM(...).arun(...)`` with the server's models and limits; the limits
an agent passes can lower those, never raise them. A user mistake (a missing path, a file that
is not a run notebook) is a tool error naming the problem, and the server goes on serving.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from pathlib import Path
from typing import Any

try:
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from pydantic import BaseModel, Field
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("rlm_kernel.mcp needs the MCP SDK: pip install 'rlm-kernel[mcp]'") from e

from . import __version__, viewer
from .errors import RLMKernelError
from .llm import resolve
from .run import RLM, default_notebook_path
from .types import Limits

__all__ = ["AskLimits", "AskResult", "build_server", "serve"]

INSTRUCTIONS = (
    "rlm-kernel answers questions over inputs far larger than a context window (long files, "
    "whole folders, logs, datasets). Call `ask` with the question and the paths instead of "
    "reading the files yourself: a root model explores them in a Jupyter kernel with code and "
    "sub-model calls, and the run is recorded as a notebook. Call `view` on that notebook to see "
    "how the answer was found."
)


class AskLimits(BaseModel):
    """Bounds for one ``ask``; each can only tighten the server's own."""

    max_steps: int | None = Field(None, gt=0, description="root-model turns")
    max_subcalls: int | None = Field(None, gt=0, description="sub-model calls in the whole run")
    max_cost_usd: float | None = Field(None, gt=0, description="dollars for the whole run")
    timeout: float | None = Field(None, gt=0, description="seconds for the whole run")


class AskResult(BaseModel):
    """What ``ask`` returns."""

    answer: str | None = Field(description="the final answer, or null if the run found none")
    status: str = Field(description="answered, no_answer, error or interrupted")
    stop_reason: str | None = Field(description="why the run stopped: final, max_steps, ...")
    cost_usd: float | None = Field(description="dollars spent; null if a model has no price")
    notebook: str = Field(description="the run notebook: open it, or pass it to `view`")
    steps: int = Field(description="root-model turns taken")
    subcalls: int = Field(description="sub-model calls made")
    duration_s: float = Field(description="seconds the run took")
    error: str | None = Field(description="what went wrong, for a run that failed")


def tighten(limits: Limits, asked: AskLimits | None) -> Limits:
    """``limits`` with each bound ``asked`` for lowered to it (``None`` asks for nothing)."""
    if asked is None:
        return limits
    changes: dict[str, Any] = {}
    for name, value in asked.model_dump(exclude_none=True).items():
        current = getattr(limits, name)
        changes[name] = value if current is None else min(current, value)
    return dataclasses.replace(limits, **changes)


def _context(paths: list[str], base: Path) -> Path | list[Path]:
    """The paths an agent gave, checked and made absolute (against ``base``)."""
    if not paths:
        raise ToolError("give at least one path: a file or a folder to ask about")
    found = []
    for given in paths:
        path = Path(os.path.expanduser(given))
        path = path if path.is_absolute() else base / path
        if not path.exists():
            raise ToolError(f"no such file or folder: {given} (looked for {path})")
        found.append(path)
    return found[0] if len(found) == 1 else found


def build_server(
    model: str,
    sub_model: str,
    limits: Limits | None = None,
    *,
    runs_dir: str | os.PathLike[str] = "rlm-runs",
    kernel_name: str = "python3",
) -> MCPServer:
    """The MCP server with the ``ask`` and ``view`` tools.

    Args:
        model: the root model, ``provider:model``.
        sub_model: the sub-model, ``provider:model``.
        limits: the bounds of every run (the defaults of :class:`~rlm_kernel.types.Limits`).
        runs_dir: where run notebooks are written; relative paths, here and in ``ask``, are
            taken from the server's working directory.
        kernel_name: the Jupyter kernelspec the runs use.

    Raises:
        UsageError: a model is not ``provider:model``, its provider is unknown, or its API key
            is missing: found before any client connects.
    """
    for spec in (model, sub_model):
        resolve(spec)
    base = Path.cwd()
    runs = Path(runs_dir) if Path(runs_dir).is_absolute() else base / runs_dir
    server_limits = limits or Limits()
    server = MCPServer(
        "rlm-kernel",
        title="rlm-kernel: Recursive Language Models in a Jupyter kernel",
        instructions=INSTRUCTIONS,
        version=__version__,
    )

    @server.tool(structured_output=True)
    async def ask(
        question: str, paths: list[str], ctx: Context, limits: AskLimits | None = None
    ) -> AskResult:
        """Answer a question over files or folders too large to read, recording a notebook.

        Args:
            question: what to find out, as you would ask a colleague who will read everything.
            paths: files or folders (relative to the server's working directory, or absolute);
                one path is the context, several are a list of contexts.
            limits: optional lower bounds than the server's for this run.
        """
        context = _context(paths, base)

        async def progress(*, step: int, max_steps: int, **_: Any) -> None:
            await ctx.report_progress(step, max_steps, f"step {step} of at most {max_steps}")

        try:
            rlm = RLM(
                model,
                sub_model,
                limits=tighten(server_limits, limits),
                kernel_name=kernel_name,
                display=False,
                on_step=progress,
            )
            runs.mkdir(parents=True, exist_ok=True)
            result = await rlm.arun(
                question, context, notebook=runs / default_notebook_path(uuid.uuid4().hex).name
            )
        except RLMKernelError as e:
            raise ToolError(str(e)) from None
        return AskResult(
            answer=result.answer,
            status=result.status,
            stop_reason=result.stop_reason,
            cost_usd=result.cost_usd,
            notebook=str(result.notebook),
            steps=result.steps,
            subcalls=result.subcalls,
            duration_s=round(result.duration_s, 3),
            error=result.error,
        )

    @server.tool()
    def view(notebook: str) -> str:
        """Summarize a run notebook written by `ask`: the run, then one line per step.

        Args:
            notebook: the notebook path that `ask` returned.
        """
        path = Path(os.path.expanduser(notebook))
        path = path if path.is_absolute() else base / path
        try:
            return viewer.summarize(path)
        except RLMKernelError as e:
            raise ToolError(str(e)) from None

    return server


def serve(
    server: MCPServer, *, transport: str = "stdio", host: str = "127.0.0.1", port: int = 8000
) -> None:
    """Run ``server`` until its client goes: over stdio, or streamable HTTP at ``host:port``."""
    if transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=host, port=port)
