"""Watching and steering a run as it happens: the live widget, and the humans in the loop.

In a Jupyter kernel, :class:`LiveDisplay` shows a run while it goes (step, code, last output,
sub-calls, tokens, cost, time, a link to the run notebook) with a Stop button, and
:class:`WidgetApprover` asks before each code block runs (edit, Run, Skip, Stop). In a terminal,
:class:`TerminalApprover` asks the same on a prompt. :func:`attach` picks them for a run; the
package registers it as the run core's default display (``run.set_default_display``).

Buttons need the kernel to process widget messages while the cell that started the run is still
running. A recent ipykernel (7.4 or newer) does that while a cell *awaits*, so the buttons work
when the run is on the kernel's own event loop: ``await rlm.arun(...)`` or the ``%%rlm`` magic.
A blocking ``rlm.run(...)`` runs on a background thread while the cell waits; the widget still
updates (ipykernel sends widget updates from any thread), but clicks wait for the cell to end, so
its Stop button is replaced by a hint and an approver needs the awaited form.
"""

from __future__ import annotations

import asyncio
import html
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from . import parse
from .errors import NotebookFormatError, RunStopped, UsageError
from .progress import (
    ChildState,
    ChildTracker,
    TerminalProgress,
    cost_text,
    one_line,
    plural,
)
from .record import SubcallRecord, read
from .types import RunResult, Usage, tokens_text

__all__ = [
    "LiveDisplay",
    "TerminalApprover",
    "TerminalProgress",
    "WidgetApprover",
    "attach",
    "in_jupyter",
    "on_kernel_loop",
]

CODE_CHARS = 4_000
OUTPUT_CHARS = 2_000
Decision = str | None | bool  # code to run, None to skip, False to stop

_PRE = (
    "margin:0;padding:6px 8px;white-space:pre-wrap;word-break:break-word;font-size:12px;"
    "max-height:16em;overflow:auto"
)
_MUTED = "color:#656d76;font-size:12px"


def in_jupyter() -> bool:
    """Whether this process is an IPython kernel (a shell with a kernel behind it)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def on_kernel_loop() -> bool:
    """Whether the caller runs on the kernel's own event loop, where widget clicks arrive.

    Called from inside the run's coroutine: an awaited ``rlm.arun`` runs on the kernel's main
    thread; a blocking ``rlm.run`` runs on a background thread.
    """
    return in_jupyter() and threading.current_thread() is threading.main_thread()


def _ipywidgets() -> Any:
    try:
        import ipywidgets
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "the live display needs ipywidgets: pip install 'rlm-kernel[lab]'"
        ) from e
    return ipywidgets


def _has_ipywidgets() -> bool:
    try:
        _ipywidgets()
    except ModuleNotFoundError:
        return False
    return True


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… [{len(text) - limit:,} more characters]"


def _pre(text: str, style: str = "") -> str:
    return f"<pre style='{_PRE};{style}'>{html.escape(text)}</pre>"


def notebook_link(
    path: str | os.PathLike[str],
    start: str | os.PathLike[str] | None = None,
    *,
    text: str | None = None,
) -> str:
    """An HTML link to the run notebook, relative to ``start`` (the kernel's working directory).

    JupyterLab opens relative links of an output in the file browser's tree, so the notebook
    opens in a new tab. The link shows ``text``, or the relative path.
    """
    try:
        rel = os.path.relpath(Path(path).resolve(), Path(start or os.getcwd()).resolve())
    except ValueError:  # another drive on Windows
        rel = str(path)
    rel = Path(rel).as_posix()
    shown = html.escape(rel if text is None else text)
    return f"<a href='{html.escape(rel, quote=True)}' target='_blank'>{shown}</a>"


class LiveDisplay:
    """A widget that follows one run: progress, code, last output, sub-calls, children, Stop.

    Its :meth:`hooks` are the run's ``on_step``, ``on_output``, ``on_subcall`` and
    ``on_child``; they may be called from another thread than the one that built the widget.
    Child runs (``rlm_query``) are listed under the run, indented by depth, each with its
    state, steps, tokens and cost and a link to its notebook; Stop ends the whole tree.

    Attributes:
        widget: the ipywidgets box to display.
        stop_button: ends the run and all its child runs cleanly (every notebook of the tree is
            saved with status ``interrupted``).
        stoppable: whether clicks can reach the kernel during the run (see the module docs).
        tree: the child runs seen so far.
    """

    MAX_CHILD_ROWS = 12  # rows of the children list; running children are shown first

    def __init__(
        self,
        notebook: str | os.PathLike[str],
        *,
        max_steps: int,
        question: str = "",
        stoppable: bool = True,
        approver: WidgetApprover | None = None,
    ) -> None:
        w = _ipywidgets()
        self.notebook = Path(notebook)
        self.max_steps = max_steps
        self.stoppable = stoppable
        self.step = 0
        self.state = "starting"
        self.subcalls = 0
        self.sub_cost: float | None = 0.0
        self.cost_usd: float | None = 0.0
        self.usage: dict[str, Usage] = {}
        self.started = time.monotonic()
        self.stop_requested = False
        self._task: asyncio.Future[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.header = w.HTML()
        self.code = w.HTML()
        self.output = w.HTML()
        self.subcall_line = w.HTML()
        self.tree = ChildTracker(notebook)
        self.children_list = w.HTML()
        self.stop_button = w.Button(
            description="Stop", icon="stop", button_style="danger", disabled=not stoppable
        )
        self.stop_button.on_click(lambda _: self.stop())
        hint = w.HTML(
            ""
            if stoppable
            else f"<span style='{_MUTED}'>to stop, interrupt the kernel; for a Stop button run "
            "<code>await rlm.arun(...)</code> or <code>%%rlm</code></span>"
        )
        question_html = w.HTML(
            f"<div style='{_MUTED}'>question: {html.escape(_clip(question, 300))}</div>"
            if question
            else ""
        )
        parts = [
            self.header,
            question_html,
            self.code,
            self.output,
            self.subcall_line,
            self.children_list,
        ]
        if approver is not None:
            approver.embedded = True
            parts.append(approver.widget)
        parts.append(w.HBox([self.stop_button, hint]))
        self.widget = w.VBox(parts)
        self._refresh()

    # -- the run's hooks --------------------------------------------------------------------

    def hooks(self) -> dict[str, Callable[..., None]]:
        """The ``on_step``, ``on_output``, ``on_subcall`` and ``on_child`` hooks of ``RLM``."""
        return {
            "on_step": self.on_step,
            "on_output": self.on_output,
            "on_subcall": self.on_subcall,
            "on_child": self.on_child,
        }

    def on_step(
        self,
        *,
        step: int,
        max_steps: int,
        text: str,
        usage: dict[str, Usage],
        cost_usd: float | None,
        **_: Any,
    ) -> None:
        """After each model reply: show the step and the code it is about to run."""
        self.step, self.max_steps, self.state = step, max_steps, "running"
        self.usage, self.cost_usd, self.sub_cost = usage, cost_usd, 0.0
        blocks = [b.code for b in parse.code_blocks(text)]
        code = "\n\n".join(blocks) if blocks else "(no code in this reply)"
        self.code.value = _pre(_clip(code, CODE_CHARS), "background:#f6f8fa")
        self._refresh()

    def on_output(self, *, step: int, block: int, status: str, shown: str, **_: Any) -> None:
        """After each block: show what the model will be shown."""
        style = "" if status == "ok" else "background:#ffebe9"
        label = f"<div style='{_MUTED}'>output of block {step}.{block}: {html.escape(status)}</div>"
        self.output.value = label + _pre(_clip(shown, OUTPUT_CHARS) or "(no output)", style)
        self._refresh()

    def on_subcall(self, *, record: SubcallRecord, **_: Any) -> None:
        """After each sub-call: count it and show its prompt and answer, shortened."""
        self.subcalls += 1
        if record.cost_usd is None or self.sub_cost is None:
            self.sub_cost = None
        else:
            self.sub_cost += record.cost_usd
        error = record.error
        reply = f"error: {error.type}: {error.message}" if error else (record.response or "")
        self.subcall_line.value = (
            f"<div style='{_MUTED}'>sub-call #{record.id} ({html.escape(record.model)}): "
            f"{html.escape(_clip(record.prompt_preview, 120))} → "
            f"{html.escape(_clip(reply, 200))}</div>"
        )
        self._refresh()

    def on_child(self, *, event: str, notebook: str, depth: int, question: str, **kw: Any) -> None:
        """When a child run starts, takes a step or ends: update its row."""
        self.tree.update(event=event, notebook=notebook, depth=depth, question=question, **kw)
        self._show_children()

    def _refresh(self) -> None:
        tokens = html.escape(tokens_text(self.usage.values()))
        cost = None if self.cost_usd is None or self.sub_cost is None else self.cost_usd
        cost = None if cost is None else cost + (self.sub_cost or 0)
        step = f"step {self.step} of {self.max_steps}" if self.step else "waiting for the model"
        self.header.value = (
            f"<b>RLM {html.escape(self.state)}</b> · {step} · {tokens} · "
            f"{plural(self.subcalls, 'sub-call')} · {cost_text(cost)} · "
            f"{time.monotonic() - self.started:.1f} s · notebook {notebook_link(self.notebook)}"
        )

    def _show_children(self) -> None:
        rows = self.tree.ordered()
        if not rows:
            self.children_list.value = ""
            return
        running, ended = self.tree.counts()
        shown = rows
        if len(rows) > self.MAX_CHILD_ROWS:
            # Running children first, then those that ended last; shown in tree order.
            by_interest = sorted(rows, key=lambda c: (not c.running, -(c.ended or 0.0)))
            keep = {id(c) for c in by_interest[: self.MAX_CHILD_ROWS]}
            shown = [c for c in rows if id(c) in keep]
        more = len(rows) - len(shown)
        title = (
            f"<div style='{_MUTED}'>child runs: {running:,} running · {ended:,} ended"
            + (f" · {more:,} not listed" if more else "")
            + "</div>"
        )
        body = "".join(_child_row(c) for c in shown)
        self.children_list.value = f"{title}<table style='{_TABLE}'>{body}</table>"

    # -- running and stopping ---------------------------------------------------------------

    async def run(self, coro: Awaitable[RunResult]) -> RunResult:
        """Run ``coro`` (the run) as a task that :meth:`stop` can cancel, and show how it ended.

        A stopped run still returns its :class:`RunResult`, read back from its notebook (status
        ``interrupted``).
        """
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.ensure_future(coro)
        self.started = time.monotonic()
        if self.stop_requested:  # clicked before the run started
            self._task.cancel()
        try:
            result = await self._task
        except asyncio.CancelledError:
            if not (self.stop_requested and self._task.cancelled()):
                raise  # the caller's own cancellation, not the button's
            result = result_from_notebook(self.notebook)
        except BaseException:
            self._finish("failed")
            raise
        self._finish(result.status.replace("_", " "))
        return result

    def stop(self) -> None:
        """End the run cleanly: what the Stop button does. Safe to call from any thread."""
        if self.stop_requested or (self._task is not None and self._task.done()):
            return
        self.stop_requested = True
        self.state = "stopping"
        self.stop_button.disabled = True
        self._refresh()
        if self._task is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)

    def _finish(self, state: str) -> None:
        self.state = state
        self.stop_button.disabled = True
        if self.tree.settle():
            self._show_children()
        self._refresh()


_TABLE = "border-collapse:collapse;font-size:12px;margin:2px 0"
_CELL = "padding:1px 10px 1px 0;text-align:left;white-space:nowrap"
_STATE_COLOURS = {"answered": "#1a7f37", "error": "#cf222e", "interrupted": "#9a6700"}


def _child_row(child: ChildState) -> str:
    if child.state == "starting":
        steps = "waiting for the model"
    elif child.running:
        steps = f"step {child.step} of {child.max_steps}"
    else:
        steps = plural(child.step, "step")
    colour = _STATE_COLOURS.get(child.state, "#656d76")
    cells = [
        f"<span style='padding-left:{(child.depth - 2) * 1.5:g}em'>"
        f"{notebook_link(child.notebook, text=child.label)}</span>",
        f"<span style='color:{colour}'>{html.escape(child.state.replace('_', ' '))}</span>",
        html.escape(steps),
        f"{child.tokens:,} tokens",
        cost_text(child.cost_usd),
        f"{child.elapsed():.1f} s",
        f"<span style='{_MUTED}'>{html.escape(one_line(child.question))}</span>",
    ]
    return "<tr>" + "".join(f"<td style='{_CELL}'>{c}</td>" for c in cells) + "</tr>"


def result_from_notebook(path: str | os.PathLike[str]) -> RunResult:
    """The :class:`RunResult` a run notebook records (for a run that ended by cancellation)."""
    try:
        run = read(path).run
    except NotebookFormatError as e:
        raise RunStopped(f"the run was stopped and its notebook cannot be read: {e}") from None
    return RunResult(
        answer=run.answer,
        status=run.status,  # type: ignore[arg-type]
        notebook=str(Path(path)),
        run_id=run.run_id,
        stop_reason=run.stop_reason,
        steps=run.steps,
        subcalls=run.subcalls,
        usage=dict(run.usage),
        cost_usd=run.cost_usd,
        duration_s=float(run.duration_s or 0.0),
        error=run.error,
        models={k: str(v) for k, v in run.models.items()},
        children=[c.to_metadata() for c in run.children],
    )


# -- humans in the loop -------------------------------------------------------------------------


class TerminalApprover:
    """Ask on a terminal before each code block runs: yes, no (skip), edit, or stop.

    ``e`` opens the block in ``$VISUAL`` / ``$EDITOR`` (``vi`` when neither is set) and asks
    again with the edited code. The end of input stops the run.

    Args:
        stdin: where answers are read (default ``sys.stdin``).
        stdout: where blocks and prompts are written (default ``sys.stdout``).
        editor: the editor command; by default read from the environment at each edit.
    """

    PROMPT = "run it? [y]es / [n]o (skip) / [e]dit / [s]top: "

    def __init__(
        self, stdin: TextIO | None = None, stdout: TextIO | None = None, editor: str | None = None
    ) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.editor = editor

    def __call__(self, *, step: int, block: int, code: str, **_: Any) -> Decision:
        """Show the block and return the code to run, ``None`` to skip or ``False`` to stop."""
        out = self.stdout or sys.stdout
        print(f"\n--- step {step}, block {block} ---\n{code}\n---", file=out, flush=True)
        while True:
            print(self.PROMPT, end="", file=out, flush=True)
            line = (self.stdin or sys.stdin).readline()
            if not line:
                print("(end of input: stopping)", file=out, flush=True)
                return False
            choice = line.strip().lower()[:1]
            if choice == "y":
                return code
            if choice == "n":
                return None
            if choice == "s":
                return False
            if choice == "e":
                try:
                    code = self.edit(code)
                except UsageError as e:
                    print(e, file=out, flush=True)
                    continue
                print(f"--- edited ---\n{code}\n---", file=out, flush=True)
                continue
            print("answer y, n, e or s", file=out, flush=True)

    def edit(self, code: str) -> str:
        """Open ``code`` in the editor and return what was saved.

        Raises:
            UsageError: the editor could not be started or exited with an error.
        """
        command = self.editor or os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        fd, name = tempfile.mkstemp(prefix="rlm-block-", suffix=".py")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(code if code.endswith("\n") else code + "\n")
            try:
                done = subprocess.run([*shlex.split(command), name], check=False)
            except OSError as e:
                raise UsageError(f"cannot start the editor {command!r}: {e}") from None
            if done.returncode != 0:
                raise UsageError(f"the editor {command!r} exited with status {done.returncode}")
            return Path(name).read_text(encoding="utf-8").rstrip("\n")
        finally:
            Path(name).unlink(missing_ok=True)


class WidgetApprover:
    """Ask in a Jupyter widget before each code block runs: an editable code area and buttons.

    **Run** runs the area's code (the model's, or your edit), **Skip** skips the block, **Stop**
    ends the run (status ``interrupted``). Awaiting a click needs the run on the kernel's event
    loop (``await rlm.arun(...)`` or ``%%rlm --approve``).

    Attributes:
        widget: the box to display; shown by itself on the first block unless a
            :class:`LiveDisplay` holds it.
        editor: the ``Textarea`` with the block's code.
        run_button, skip_button, stop_button: the three choices.
    """

    def __init__(self) -> None:
        w = _ipywidgets()
        self.embedded = False
        self.label = w.HTML()
        self.editor = w.Textarea(layout=w.Layout(width="100%", height="12em"))
        self.run_button = w.Button(description="Run", icon="play", button_style="success")
        self.skip_button = w.Button(description="Skip", icon="forward")
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger")
        self.run_button.on_click(lambda _: self._decide(self.editor.value))
        self.skip_button.on_click(lambda _: self._decide(None))
        self.stop_button.on_click(lambda _: self._decide(False))
        self.widget = w.VBox(
            [self.label, self.editor, w.HBox([self.run_button, self.skip_button, self.stop_button])]
        )
        self._pending: asyncio.Future[Decision] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting(False)

    async def __call__(self, *, step: int, block: int, code: str, **_: Any) -> Decision:
        """Show the block and wait for Run (with the area's code), Skip or Stop."""
        if self._pending is not None and not self._pending.done():
            raise RuntimeError("this approver is already waiting for a decision")
        if not self.embedded:
            self.embedded = True
            from IPython.display import display

            display(self.widget)
        self._loop = asyncio.get_running_loop()
        self._pending = self._loop.create_future()
        self.label.value = f"<b>step {step}, block {block}</b>: edit the code, then choose"
        self.editor.value = code
        self._waiting(True)
        try:
            return await self._pending
        finally:
            self._waiting(False)
            self.label.value = f"<span style='{_MUTED}'>waiting for the model…</span>"

    def _decide(self, decision: Decision) -> None:
        pending, loop = self._pending, self._loop
        if pending is None or loop is None or pending.done():
            return
        self._waiting(False)  # one click decides; a double click is not a second answer

        def settle() -> None:
            if not pending.done():
                pending.set_result(decision)

        loop.call_soon_threadsafe(settle)

    def _waiting(self, waiting: bool) -> None:
        for widget in (self.editor, self.run_button, self.skip_button, self.stop_button):
            widget.disabled = not waiting


# -- what RLM calls ------------------------------------------------------------------------------


def attach(
    *,
    display: bool | None,
    hooks: dict[str, Any],
    approve: Any,
    notebook: Path,
    max_steps: int,
    question: str,
) -> tuple[dict[str, Any], Any, LiveDisplay | None]:
    """Choose the hooks, the approver and the live display of one run.

    Called from inside the run's coroutine, so it can tell whether clicks can reach it.
    ``display=None`` shows the live widget in a Jupyter kernel when no hook of the caller's is set
    and ipywidgets is installed; ``True`` always shows it, ``False`` never. ``approve=True``
    becomes a :class:`WidgetApprover` in Jupyter and a :class:`TerminalApprover` elsewhere.

    Returns:
        The hooks, the approver and the live display (``None`` when none is shown).

    Raises:
        UsageError: ``approve=True`` in a blocking ``rlm.run`` inside Jupyter, where no click
            could arrive.
    """
    jupyter = in_jupyter()
    clickable = on_kernel_loop()
    approver = approve
    if approve is True:
        if not jupyter:
            approver = TerminalApprover()
        elif not clickable:
            raise UsageError(
                "approve=True in Jupyter waits for button clicks, which a blocking rlm.run(...) "
                "cannot receive: use `await rlm.arun(...)` or the `%%rlm --approve` magic"
            )
        else:
            approver = WidgetApprover()
    if display is None and not jupyter and not any(hooks.values()) and sys.stderr.isatty():
        # In a terminal the same information is a line per step on stderr.
        return TerminalProgress(notebook=notebook).hooks(), approver, None
    if display is None:
        display = jupyter and not any(hooks.values()) and _has_ipywidgets()
    if not display:
        return hooks, approver, None
    live = LiveDisplay(
        notebook,
        max_steps=max_steps,
        question=question,
        stoppable=clickable,
        approver=approver if isinstance(approver, WidgetApprover) else None,
    )
    if jupyter:
        from IPython.display import display as show

        show(live.widget)
    merged = {**hooks}  # the caller's other hooks (on_step_end) run as given
    merged.update({name: _both(hooks.get(name), hook) for name, hook in live.hooks().items()})
    return merged, approver, live


def _both(first: Callable[..., Any] | None, second: Callable[..., Any]) -> Callable[..., Any]:
    if first is None:
        return second

    async def call(**kwargs: Any) -> None:
        result = first(**kwargs)
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            await result
        second(**kwargs)

    return call
