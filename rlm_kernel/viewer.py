"""Read a run notebook as a trajectory: a terminal summary and a self-contained offline HTML page.

Everything comes from the notebook through :mod:`rlm_kernel.record`. :func:`trajectory` turns it
into plain data (the run's summary, what the model started from, and per step the model's text,
code, outputs, sub-calls and running totals); the summary text, the HTML page and the widgets in
:mod:`rlm_kernel.widgets` are all drawn from that data.

The HTML page needs no network: its script and style are inlined from ``_viewer/``, the run goes
in as JSON, images are the notebook's own base64 data, and a Content-Security-Policy forbids every
request. The script builds the page with DOM text nodes, so model output is never parsed as HTML;
HTML outputs are shown in sandboxed frames.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import json
import os
import pathlib
import re
import textwrap
from importlib import resources
from typing import Any

import nbformat

from .errors import OutputPathError
from .llm import pricing
from .record import RunNotebook, StepRecord, SubcallRecord, from_notebook, read
from .record.format import prose_without_markers
from .types import Usage

IMAGE_MIMES = ("image/png", "image/jpeg", "image/gif")
PREVIEW_CHARS = 2_000  # of the context preview and the system prompt on the start page

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# Control characters a terminal would act on; tab and newline are kept where text keeps lines.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


# -- data ----------------------------------------------------------------------------------------


def trajectory(run: RunNotebook | nbformat.NotebookNode) -> dict[str, Any]:
    """The run recorded in a notebook as plain, JSON-ready data.

    Args:
        run: a run notebook as :func:`rlm_kernel.record.read` returns it (or a loaded
            notebook).

    Returns:
        ``{"summary": {...}, "start": {...}, "steps": [...]}``. Each step holds ``step``,
        ``text`` (the model's prose), ``latency_s``, ``tokens`` (root and sub-calls of the step),
        ``cum_tokens``, ``cum_cost_usd`` (``None`` while nothing was priced) and ``cells``, each
        with ``block``, ``source``, ``status``, ``duration_s``, ``outputs`` and ``subcalls``.
        ``summary.children`` lists the run's tree of child runs.
    """
    if not isinstance(run, RunNotebook):
        run = from_notebook(run, "run.ipynb")
    meta = run.run
    root_tokens = meta.usage["root"].total_tokens
    sub_tokens = meta.usage["sub"].total_tokens
    summary = {
        "run_id": meta.run_id,
        "question": meta.question,
        "answer": meta.answer,
        "status": meta.status,
        "stop_reason": meta.stop_reason,
        "models": {"root": meta.models.get("root"), "sub": meta.models.get("sub")},
        "steps": meta.steps,
        "subcalls": meta.subcalls,
        "tokens": {"root": root_tokens, "sub": sub_tokens, "total": root_tokens + sub_tokens},
        "cost_usd": meta.cost_usd,
        "duration_s": meta.duration_s,
        "started": meta.started,
        "error": meta.error,
        "parent": meta.parent.to_metadata() if meta.parent is not None else None,
        "depth": meta.depth,
        "children": [c.to_metadata() for c in meta.children],
    }
    context = meta.context
    start = {
        "context": {
            k: context.get(k) for k in ("type", "chars", "bytes", "sha256", "path") if k in context
        },
        "preview": _str(context.get("preview"))[:PREVIEW_CHARS],
        "system_prompt": _str(meta.system_prompt)[:PREVIEW_CHARS],
    }
    steps = []
    cum_tokens, cum_cost = 0, None
    for entry in run.steps:
        step = _step(entry, meta.models.get("root"))
        cum_tokens += step["tokens"]
        if step["cost_usd"] is not None:
            cum_cost = (cum_cost or 0.0) + step["cost_usd"]
        step["cum_tokens"] = cum_tokens
        step["cum_cost_usd"] = cum_cost
        steps.append(step)
    return {"summary": summary, "start": start, "steps": steps}


def _step(entry: StepRecord, root_model: str | None) -> dict[str, Any]:
    cost = entry.cost_usd
    if cost is None and entry.has_reply:
        cost = _root_cost(root_model, entry.usage)
    tokens = entry.usage.total_tokens
    cells = []
    for cell in entry.code:
        subcalls = [_subcall(s) for s in cell.subcalls]
        for s in subcalls:
            tokens += s["tokens"]
            if s["cost_usd"] is not None:
                cost = (cost or 0.0) + s["cost_usd"]
        cells.append(
            {
                "block": cell.block,
                "source": _str(cell.source),
                "status": cell.exec.status,
                "duration_s": cell.exec.duration_s,
                "outputs": [_output(o) for o in cell.outputs],
                "subcalls": subcalls,
            }
        )
    return {
        "step": entry.step,
        "text": prose_without_markers(entry.prose),
        "last_call": bool(entry.extra.get("last_call")),
        "latency_s": entry.latency_s if entry.has_reply else None,
        "tokens": tokens,
        "cost_usd": cost,
        "cells": cells,
    }


def _subcall(record: SubcallRecord) -> dict[str, Any]:
    error = record.error
    return {
        "id": record.id,
        "kind": record.kind,
        "model": record.model,
        "prompt_preview": record.prompt_preview,
        "prompt_chars": record.prompt_chars,
        "response": record.response,
        "latency_s": record.latency_s,
        # A child's usage is its whole tree's, already counted in its own notebook.
        "tokens": 0 if record.child else record.usage.total_tokens,
        "cost_usd": None if record.child else record.cost_usd,
        "error": f"{error.type}: {error.message}" if error is not None else None,
        "child": record.child,
        "note": record.note,
    }


def _output(out: dict[str, Any]) -> dict[str, Any]:
    kind = out.get("output_type")
    if kind == "stream":
        return {"kind": "stream", "name": out.get("name"), "text": _str(out.get("text"))}
    if kind == "error":
        tb = "\n".join(_str(line) for line in out.get("traceback") or [])
        text = _ANSI.sub("", tb) or f"{out.get('ename')}: {out.get('evalue')}"
        return {"kind": "error", "ename": out.get("ename"), "text": text}
    data = out.get("data") or {}
    plain = _str(data.get("text/plain"))
    for mime in IMAGE_MIMES:
        if mime in data and (b64 := _clean_base64(data[mime])) is not None:
            return {"kind": "image", "mime": mime, "data": b64, "text": plain}
    if "image/svg+xml" in data:
        # As an <img> source an SVG cannot run scripts or load anything.
        svg = base64.b64encode(_str(data["image/svg+xml"]).encode("utf-8")).decode("ascii")
        return {"kind": "image", "mime": "image/svg+xml", "data": svg, "text": plain}
    if "text/html" in data:
        return {"kind": "html", "html": _str(data["text/html"]), "text": plain}
    if plain or not data:
        return {"kind": "text", "text": plain}
    return {"kind": "text", "text": f"[{', '.join(sorted(data))}]"}


def _clean_base64(value: Any) -> str | None:
    """The base64 text of an image output without whitespace, or ``None`` if it is not base64."""
    text = "".join(_str(value).split())
    if not _BASE64.fullmatch(text):
        return None
    try:
        base64.b64decode(text, validate=True)
    except binascii.Error:
        return None
    return text


def _root_cost(model: str | None, usage: Usage) -> float | None:
    provider, _, name = str(model or "").partition(":")
    return pricing.cost(provider, name, usage) if name else None


def _usage(value: Any) -> Usage:
    return Usage.from_dict(value if isinstance(value, dict) else None)


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return str(value)


# -- terminal ------------------------------------------------------------------------------------


def summarize(path: str | os.PathLike[str], *, width: int = 100) -> str:
    """A compact text summary of a run notebook: the run, then one line per step.

    Args:
        path: the run notebook.
        width: the widest a line may be.

    Raises:
        NotebookFormatError: ``path`` is not a readable run notebook.
    """
    return summary_text(trajectory(read(path)), width=width)


def summary_text(data: dict[str, Any], *, width: int = 100) -> str:
    """The terminal summary of :func:`trajectory` data (see :func:`summarize`)."""
    s = data["summary"]
    status = f"{s['status']}" + (f" ({s['stop_reason']})" if s["stop_reason"] else "")
    tokens = s["tokens"]
    duration = "—" if s["duration_s"] is None else f"{s['duration_s']:.1f} s"
    lines = [
        _fit(f"RLM run {s['run_id']} · {status}", width),
        *_field("question", s["question"], width, max_lines=4),
        *_field("answer", "—" if s["answer"] is None else str(s["answer"]), width, max_lines=8),
        _fit(f"models    root {s['models']['root']} · sub {s['models']['sub']}", width),
        _fit(
            f"totals    {s['steps']} steps · {s['subcalls']} sub-calls · "
            f"{tokens['total']:,} tokens (root {tokens['root']:,} · sub {tokens['sub']:,}) · "
            f"{cost_text(s['cost_usd'])} · {duration}",
            width,
        ),
    ]
    if s["error"]:
        lines += _field("error", str(s["error"]), width, max_lines=3)
    if isinstance(s["parent"], dict):
        parent = s["parent"]
        lines.append(_fit(f"parent    {parent.get('notebook')} step {parent.get('step')}", width))
    lines += ["", "step  blocks  exec          sub-calls  latency  model"]
    for step in data["steps"]:
        cells = step["cells"]
        statuses: dict[str, int] = {}
        for cell in cells:
            statuses[str(cell["status"])] = statuses.get(str(cell["status"]), 0) + 1
        exec_text = ",".join(k if n == 1 else f"{k}×{n}" for k, n in statuses.items()) or "—"
        latency = "—" if step["latency_s"] is None else f"{step['latency_s']:.2f}s"
        first = next((ln.strip() for ln in step["text"].splitlines() if ln.strip()), "")
        calls = sum(len(c["subcalls"]) for c in cells)
        row = (
            f"{step['step']:>4}  {len(cells):>6}  {exec_text:<12}  {calls:>9}  {latency:>7}  "
            f"{_one_line(first)}"
        )
        lines.append(_fit(row, width))
    if not data["steps"]:
        lines.append("   —  no steps recorded")
    if s.get("children"):
        lines += ["", "child runs"]
        for child in s["children"]:
            indent = "  " * (int(child.get("depth") or 2) - 1)
            row = (
                f"{indent}{child.get('notebook')} · {child.get('status')} · "
                f"{child.get('steps')} steps · {int(child.get('tokens') or 0):,} tokens · "
                f"{cost_text(child.get('cost_usd'))} · {_one_line(str(child.get('question')))}"
            )
            lines.append(_fit(row, width))
    return "\n".join(lines) + "\n"


def _field(name: str, text: str, width: int, *, max_lines: int) -> list[str]:
    body = []
    for line in text.splitlines() or [""]:
        line = _CONTROL.sub("", _ANSI.sub("", line)).rstrip()
        body += textwrap.wrap(line, max(width - 10, 20)) or [""]
    if len(body) > max_lines:
        body = [*body[: max_lines - 1], f"… ({len(body) - max_lines + 1} more lines)"]
    return [_fit(f"{name if i == 0 else '':<10}{ln}", width) for i, ln in enumerate(body)]


def _one_line(text: str) -> str:
    return " ".join(_CONTROL.sub(" ", _ANSI.sub("", text)).split())


def _fit(line: str, width: int) -> str:
    return line if len(line) <= width else line[: max(width - 1, 1)] + "…"


def cost_text(value: float | None) -> str:
    """A cost in USD for people: ``$0.0123``, or ``cost unknown`` for unpriced models."""
    return "cost unknown" if value is None else f"${value:.4f}"


# -- HTML ----------------------------------------------------------------------------------------


def export_html(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> pathlib.Path:
    """Write the run notebook at ``path`` as one self-contained, offline HTML file.

    Raises:
        NotebookFormatError: ``path`` is not a readable run notebook.
        OutputPathError: ``out`` cannot be written.
    """
    page = html_page(read(path))
    target = pathlib.Path(out)
    try:
        target.write_text(page, encoding="utf-8")
    except OSError as e:
        raise OutputPathError(f"cannot write {target}: {e.strerror or e}") from e
    return target


def html_page(nb: RunNotebook | nbformat.NotebookNode) -> str:
    """The offline HTML viewer of a run notebook, as one string.

    The run goes in as JSON in a ``<script type="application/json">`` element with ``<``, ``>``
    and ``&`` written as JSON escapes, so no text in it can close the element.
    """
    data = trajectory(nb)
    script = _asset("viewer.js")
    style = _asset("viewer.css")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    # No request of any kind: only the inlined script (by hash), inline style and data: images.
    csp = (
        "default-src 'none'; "
        f"script-src 'sha256-{digest}'; "
        "style-src 'unsafe-inline'; img-src data:; frame-src 'self'"
    )
    s = data["summary"]
    title = f"RLM run {s['run_id']}"
    return _PAGE.format(
        csp=html.escape(csp),
        title=html.escape(title),
        style=style,
        summary=summary_html(data),
        data=_script_json(data),
        script=script,
    )


def summary_html(data: dict[str, Any]) -> str:
    """The run's summary (question, answer, totals) as an escaped HTML fragment."""
    s = data["summary"]
    e = html.escape
    status = str(s["status"]) + (f" ({s['stop_reason']})" if s["stop_reason"] else "")
    tokens = s["tokens"]
    duration = "—" if s["duration_s"] is None else f"{s['duration_s']:.1f} s"
    answer = (
        f'<p class="answer">{e(str(s["answer"]))}</p>'
        if s["answer"] is not None
        else '<p class="answer none">The run ended without an answer.</p>'
    )
    facts = [
        ("status", status),
        ("models", f"root {s['models']['root']} · sub {s['models']['sub']}"),
        ("steps", str(s["steps"])),
        ("sub-calls", str(s["subcalls"])),
        ("tokens", f"{tokens['total']:,} (root {tokens['root']:,} · sub {tokens['sub']:,})"),
        ("cost", cost_text(s["cost_usd"])),
        ("time", duration),
    ]
    if s["error"]:
        facts.append(("error", str(s["error"])))
    if isinstance(s["parent"], dict):
        facts.append(("parent", f"{s['parent'].get('notebook')} step {s['parent'].get('step')}"))
    items = "".join(f"<div><dt>{e(k)}</dt><dd>{e(v)}</dd></div>" for k, v in facts)
    return (
        f"<h1>RLM run <code>{e(str(s['run_id']))}</code></h1>"
        f'<p class="question">{e(s["question"])}</p>{answer}<dl class="facts">{items}</dl>'
    )


def _script_json(data: dict[str, Any]) -> str:
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    # Escapes inside JSON strings (the only place these characters occur): nothing in the data
    # can end the <script> element or open a comment in it.
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("_viewer", name).read_text(encoding="utf-8")


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
{style}</style>
</head>
<body>
<header id="summary">{summary}</header>
<nav id="controls" aria-label="steps">
<button type="button" id="prev" title="previous step (←)">◀ Prev</button>
<button type="button" id="play" title="play / pause (space)">▶ Play</button>
<button type="button" id="next" title="next step (→)">Next ▶</button>
<input type="range" id="slider" min="0" max="0" value="0" aria-label="step">
<span id="position"></span>
<span id="totals"></span>
</nav>
<main id="step"><noscript>The step viewer needs JavaScript; the summary above does not.</noscript>
</main>
<script type="application/json" id="rlm-run">{data}</script>
<script>{script}</script>
</body>
</html>
"""
