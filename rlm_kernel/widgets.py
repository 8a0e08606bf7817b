"""Step through a run notebook with ipywidgets, in Jupyter or in a page with saved widget state.

A :class:`RunViewer` holds one pre-rendered page per position (the start, then each step) in a
``Stack``. A ``Play`` widget and an ``IntSlider`` drive the stack's ``selected_index`` through
front-end links (``jslink``), so stepping keeps working where no kernel is running: a notebook
saved with its widget state, nbviewer, an exported page. A sub-call that started a child run
has a button that opens the child's own :class:`RunViewer` below the parent's (so a tree opens
level by level); that needs the kernel, and without one the child's notebook path is still shown.
"""

from __future__ import annotations

import html
import os
import pathlib
from typing import Any

try:
    import ipywidgets as w
except ModuleNotFoundError as e:  # pragma: no cover - depends on the installed extras
    raise ModuleNotFoundError(
        "the run viewer widget needs ipywidgets: pip install 'rlm-kernel[lab]'"
    ) from e

from . import viewer
from .errors import NotebookFormatError
from .record import read

PLAY_INTERVAL_MS = 1200

_PRE = "margin:0;padding:6px 8px;white-space:pre-wrap;word-break:break-word;font-size:12px"
_STYLES = {
    "code": f"{_PRE};background:#f6f8fa;border-bottom:1px solid #d0d7de",
    "stream": _PRE,
    "stderr": f"{_PRE};background:#fff8c5",
    "error": f"{_PRE};background:#ffebe9;color:#82071e",
    "text": _PRE,
}


class RunViewer(w.VBox):
    """A stepper over one run notebook: summary, Play + slider, and one page per step.

    Position 0 is the start (the context and system prompt); position ``k`` is step ``k``.

    Attributes:
        path: the run notebook.
        play: the ``Play`` widget, linked to :attr:`slider` in the front end.
        slider: the ``IntSlider`` choosing the position, linked to :attr:`pages`.
        pages: the ``Stack`` with one child per position (``len(steps) + 1`` children).
        links: the two front-end links, Play → slider and slider → ``pages.selected_index``.
        child_buttons: the button of each child run, by its notebook path relative to
            :attr:`path`.
        child_area: a ``VBox`` where a child run opens when its button is clicked (needs a
            kernel): a close button, then the child's :class:`RunViewer`, or a note saying why
            its notebook cannot be read.
        child: the child run's viewer open in :attr:`child_area`, or ``None``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Build the viewer of the run notebook at ``path``.

        Raises:
            NotebookFormatError: ``path`` is not a readable run notebook.
        """
        self.path = pathlib.Path(path)
        data = viewer.trajectory(read(self.path))
        steps = data["steps"]
        last = len(steps)
        first = 1 if last else 0
        self.play = w.Play(
            value=first, min=0, max=last, step=1, interval=PLAY_INTERVAL_MS, description="play"
        )
        self.slider = w.IntSlider(
            value=first, min=0, max=last, step=1, description="step", continuous_update=True
        )
        self.child_area = w.VBox()
        self.child: RunViewer | None = None
        self.child_buttons: dict[str, w.Button] = {}
        pages = [w.HTML(_start_html(data["start"]))]
        pages += [self._step_page(step) for step in steps]
        self.pages = w.Stack(children=pages, selected_index=first)
        # Front-end links: they live in the widget state, so they work without a kernel.
        self.links = [
            w.jslink((self.play, "value"), (self.slider, "value")),
            w.jslink((self.slider, "value"), (self.pages, "selected_index")),
        ]
        header = w.HTML(viewer.summary_html(data))
        controls = w.HBox([self.play, self.slider])
        super().__init__([header, controls, self.pages, self.child_area])

    def _step_page(self, step: dict[str, Any]) -> w.Widget:
        page = w.HTML(step_html(step))
        children = [s["child"] for c in step["cells"] for s in c["subcalls"] if s.get("child")]
        if not children:
            return page
        return w.VBox([page, *(self._child_button(str(c)) for c in children)])

    def _child_button(self, child: str) -> w.Widget:
        target = self.path.parent / child
        button = w.Button(
            description=f"open child run {child}"[:60],
            tooltip=str(target),
            icon="external-link",
            layout=w.Layout(width="auto"),
        )
        button.on_click(lambda _: self.open_child(child))
        self.child_buttons[child] = button
        return button

    def open_child(self, child: str) -> RunViewer | None:
        """Open the child run ``child`` (its path relative to :attr:`path`) below this run.

        Returns:
            The child's viewer, or ``None`` when its notebook cannot be read (the viewer then
            says why in :attr:`child_area` instead).
        """
        target = self.path.parent / child
        close = w.Button(description="close child run", icon="times", layout=w.Layout(width="auto"))
        close.on_click(lambda _: self.close_child())
        try:
            self.child = RunViewer(target)
        except NotebookFormatError as e:
            self.child = None
            body: w.Widget = w.HTML(
                f"<p style='color:#82071e'>child run {html.escape(child)} is missing: "
                f"{html.escape(str(e))}</p>"
            )
        else:
            body = self.child
        title = w.HTML(f"<h3>child run {html.escape(child)}</h3>")
        self.child_area.children = [w.HBox([title, close]), body]
        return self.child

    def close_child(self) -> None:
        """Close the child run open below this run, back to this run alone."""
        self.child = None
        self.child_area.children = []


def view(path: str | os.PathLike[str]) -> RunViewer:
    """A widget to step through the run notebook at ``path`` (see :class:`RunViewer`)."""
    return RunViewer(path)


def step_html(step: dict[str, Any]) -> str:
    """One step of :func:`rlm_kernel.viewer.trajectory` data as an escaped HTML fragment.

    Model output is escaped; images are the notebook's own base64 data; HTML outputs are shown
    in a sandboxed frame through ``srcdoc``, never inlined.
    """
    e = html.escape
    cost = viewer.cost_text(step["cum_cost_usd"])
    parts = [
        f"<h3>Step {step['step']}{' (last call)' if step['last_call'] else ''}</h3>",
        f"<p style='color:#656d76'>model {_secs(step['latency_s'])} · {step['tokens']:,} tokens "
        f"in this step · so far {step['cum_tokens']:,} tokens · {e(cost)}</p>",
    ]
    if step["text"].strip():
        parts.append(f"<div style='white-space:pre-wrap'>{e(step['text'])}</div>")
    for cell in step["cells"]:
        parts.append("<div style='border:1px solid #d0d7de;border-radius:6px;margin:8px 0'>")
        parts.append(
            f"<div style='font-size:11px;color:#656d76;padding:2px 8px'>"
            f"[{step['step']}.{cell['block']}] {e(str(cell['status']))} · "
            f"{_secs(cell['duration_s'])}</div>"
        )
        parts.append(f"<pre style='{_STYLES['code']}'>{e(cell['source'])}</pre>")
        parts += [_output_html(o) for o in cell["outputs"]]
        if cell["subcalls"]:
            parts.append(_subcalls_html(cell["subcalls"]))
        parts.append("</div>")
    return "".join(parts)


def _start_html(start: dict[str, Any]) -> str:
    e = html.escape
    facts = " · ".join(f"{k} {v}" for k, v in start["context"].items())
    parts = ["<h3>Start</h3>", f"<p style='color:#656d76'>context: {e(facts)}</p>"]
    if start["preview"]:
        parts.append(f"<pre style='{_STYLES['text']}'>{e(start['preview'])}</pre>")
    if start["system_prompt"]:
        parts.append(
            f"<details><summary>system prompt</summary>"
            f"<pre style='{_STYLES['text']}'>{e(start['system_prompt'])}</pre></details>"
        )
    return "".join(parts)


def _output_html(out: dict[str, Any]) -> str:
    e = html.escape
    kind = out["kind"]
    if kind == "image":
        # Both pieces were checked by the viewer: a known image type and plain base64 text.
        return (
            f"<img style='max-width:100%;margin:4px 8px' alt='{e(out['text'], quote=True)}' "
            f"src='data:{out['mime']};base64,{out['data']}'>"
        )
    if kind == "html":
        return (
            "<iframe sandbox='' style='width:100%;height:200px;border:0' "
            f"srcdoc='{e(out['html'], quote=True)}'></iframe>"
        )
    name = "stderr" if out.get("name") == "stderr" else kind
    style = _STYLES.get(name, _STYLES["text"])
    return f"<pre style='{style}'>{e(out['text'])}</pre>"


def _subcalls_html(subcalls: list[dict[str, Any]]) -> str:
    e = html.escape
    n = len(subcalls)
    items = []
    for s in subcalls:
        reply = f"error: {s['error']}" if s["error"] else str(s["response"])
        child = (
            f"<div style='font-size:11px'>child run: {e(str(s['child']))}</div>"
            if s.get("child")
            else ""
        )
        items.append(
            "<div style='margin:4px 0;border-left:3px solid #d0d7de;padding-left:6px'>"
            f"<div style='font-size:11px;color:#656d76'>#{s['id']} {e(str(s['kind']))} · "
            f"{e(str(s['model']))} · {_secs(s['latency_s'])} · {s['tokens']:,} tokens</div>"
            f"<pre style='{_STYLES['code']}'>{e(s['prompt_preview'])}</pre>"
            f"<pre style='{_STYLES['text']}'>{e(reply)}</pre>{child}</div>"
        )
    return (
        f"<details style='padding:2px 8px'{' open' if n <= 3 else ''}>"
        f"<summary>{n} sub-call{'s' * (n != 1)}</summary>{''.join(items)}</details>"
    )


def _secs(value: Any) -> str:
    return "—" if value is None else f"{value:.2f} s"
