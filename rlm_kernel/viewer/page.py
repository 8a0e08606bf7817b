"""The offline HTML viewer: one self-contained page holding a run and its tree of child runs."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import pathlib
from importlib import resources
from typing import Any

import nbformat

from ..errors import OutputPathError
from ..record import RunNotebook, from_notebook, read
from .data import run_tree
from .text import cost_text


def export_html(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> pathlib.Path:
    """Write the run notebook at ``path``, with its tree of child runs, as one offline HTML file.

    Raises:
        NotebookFormatError: ``path`` is not a readable run notebook (a child that is not is
            shown as missing).
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
    """The offline HTML viewer of a run notebook and its child runs, as one string.

    The runs go in as JSON (see :func:`run_tree`) in a ``<script type="application/json">``
    element with ``<``, ``>`` and ``&`` written as JSON escapes, so no text in it can close the
    element. A loaded notebook without a path has its children shown as missing.
    """
    if isinstance(nb, RunNotebook):
        tree = run_tree(nb)
    else:
        tree = run_tree(from_notebook(nb, "run.ipynb"), limit=1)
    data = tree["runs"][tree["root"]]
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
        data=_script_json(tree),
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
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


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
<nav id="runs" aria-label="run tree"></nav>
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
