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
import contextlib
import hashlib
import html
import json
import os
import pathlib
import re
import unicodedata
from importlib import resources
from typing import Any

import nbformat

from .errors import NotebookFormatError, OutputPathError
from .llm import pricing
from .record import RunNotebook, StepRecord, SubcallRecord, from_notebook, read
from .record.format import prose_without_markers
from .types import Usage

IMAGE_MIMES = ("image/png", "image/jpeg", "image/gif")
PREVIEW_CHARS = 2_000  # of the context preview and the system prompt on the start page
MAX_TREE_RUNS = 500  # runs in one HTML page; the rest are listed as not included
MIN_WIDTH = 30  # of the terminal summary
LABEL = 10  # columns of the summary's labels ("question  ")

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
    """The terminal summary of :func:`trajectory` data (see :func:`summarize`).

    No line is wider than ``width`` terminal columns (at least :data:`MIN_WIDTH`): the run's
    facts wrap under their label, the step table's rows and previews are cut with ``…``.
    """
    width = max(width, MIN_WIDTH)
    s = data["summary"]
    status = f"{s['status']}" + (f" ({s['stop_reason']})" if s["stop_reason"] else "")
    tokens = s["tokens"]
    duration = "—" if s["duration_s"] is None else f"{s['duration_s']:.1f} s"
    models = s["models"]
    lines = [
        *_facts("", [f"RLM run {s['run_id']}", status], width, indent=0),
        *_field("question", s["question"], width, max_lines=4),
        *_field("answer", "—" if s["answer"] is None else str(s["answer"]), width, max_lines=8),
        *_facts("models", [f"root {models['root']}", f"sub {models['sub']}"], width),
        *_facts(
            "totals",
            [
                _count(s["steps"], "step"),
                _count(s["subcalls"], "sub-call"),
                f"{tokens['total']:,} tokens (root {tokens['root']:,} · sub {tokens['sub']:,})",
                cost_text(s["cost_usd"]),
                duration,
            ],
            width,
        ),
    ]
    if s["error"]:
        lines += _field("error", str(s["error"]), width, max_lines=3)
    if isinstance(s["parent"], dict):
        parent = s["parent"]
        lines += _facts(
            "parent", [str(parent.get("notebook")), f"step {parent.get('step')}"], width
        )
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
        lines.append(
            f"{step['step']:>4}  {len(cells):>6}  {exec_text:<12}  {calls:>9}  {latency:>7}  "
            f"{_one_line(first)}"
        )
    if not data["steps"]:
        lines.append("   —  no steps recorded")
    if s.get("children"):
        lines += ["", "child runs"]
        for child in sorted(s["children"], key=lambda c: _natural(str(c.get("notebook")))):
            indent = 2 * max(int(child.get("depth") or 2) - int(s.get("depth") or 1), 1)
            parts = [
                str(child.get("notebook")),
                str(child.get("status")),
                _count(int(child.get("steps") or 0), "step"),
                f"{int(child.get('tokens') or 0):,} tokens",
                cost_text(child.get("cost_usd")),
                _one_line(str(child.get("question"))),
            ]
            lines += _facts(" " * indent, parts, width, indent=indent, hang=indent + 4)
    return "\n".join(_fit(line, width) for line in lines) + "\n"


def _field(name: str, text: str, width: int, *, max_lines: int) -> list[str]:
    body = []
    for line in text.splitlines() or [""]:
        line = _CONTROL.sub("", _ANSI.sub("", line.expandtabs())).rstrip()
        body += _wrap(line, width - LABEL)
    if len(body) > max_lines:
        body = [*body[: max_lines - 1], f"… ({len(body) - max_lines + 1} more lines)"]
    return [f"{name if i == 0 else '':<{LABEL}}{ln}" for i, ln in enumerate(body)]


def _facts(
    label: str, parts: list[str], width: int, *, indent: int = LABEL, hang: int | None = None
) -> list[str]:
    """``label`` then ``parts`` joined by `` · ``, wrapped between parts.

    Continued lines start ``hang`` columns in (default: ``indent``, under the first part). A
    part too wide for a line of its own is cut later, by :func:`_fit`.
    """
    pad = " " * (indent if hang is None else hang)
    lines: list[str] = []
    line, empty = f"{label:<{indent}}", True
    for part in (_one_line(p) for p in parts):
        joined = line + part if empty else f"{line} · {part}"
        if empty or _cols(joined) <= width:
            line = joined
        else:
            lines.append(line)
            line = pad + part
        empty = False
    return [*lines, line]


def _wrap(text: str, width: int) -> list[str]:
    """``text`` wrapped at spaces into lines of at most ``width`` columns (long words cut)."""
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        while _cols(word) > width:  # a word longer than a line is split across lines
            if line:
                lines.append(line)
                line = ""
            head = _cut(word, width) or word[0]
            lines.append(head)
            word = word[len(head) :]
        joined = f"{line} {word}" if line else word
        if _cols(joined) <= width:
            line = joined
        else:
            lines.append(line)
            line = word
    return [*lines, line]


def _one_line(text: str) -> str:
    return " ".join(_CONTROL.sub(" ", _ANSI.sub("", text)).split())


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _natural(text: str) -> list[Any]:
    # "1.1-10" after "1.1-9", and a run's children right after it ("a" < "a.children/…").
    stem = text.removesuffix(".ipynb")
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", stem) if p]


def _cols(text: str) -> int:
    """How many terminal columns ``text`` takes (wide characters take two, combining none)."""
    return sum(_char_cols(ch) for ch in text)


def _char_cols(ch: str) -> int:
    if ch.isascii():
        return 1
    if unicodedata.combining(ch) or unicodedata.category(ch) == "Cf":
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _cut(text: str, width: int) -> str:
    """The longest start of ``text`` that fits in ``width`` columns."""
    used = 0
    for i, ch in enumerate(text):
        used += _char_cols(ch)
        if used > width:
            return text[:i]
    return text


def _fit(line: str, width: int) -> str:
    return line if _cols(line) <= width else _cut(line, max(width - 1, 1)) + "…"


def cost_text(value: float | None) -> str:
    """A cost in USD for people: ``$0.0123``, or ``cost unknown`` for unpriced models."""
    return "cost unknown" if value is None else f"${value:.4f}"


# -- run trees ----------------------------------------------------------------------------------


def run_tree(run: RunNotebook, *, limit: int = MAX_TREE_RUNS) -> dict[str, Any]:
    """Every run of the tree under ``run`` as :func:`trajectory` data, linked both ways.

    The tree is followed through each sub-call's ``child`` link; a notebook the root's summary
    lists but no link reaches (its parent is missing) is added too. A child notebook that cannot
    be read is kept as a *missing* run: what its parent recorded of it, and why it is missing.

    Args:
        run: the tree's top notebook (usually the root), as :func:`rlm_kernel.record.read`
            returns it; children are found relative to ``run.path``.
        limit: the most runs to read; the rest are kept as missing runs.

    Returns:
        ``{"root": KEY, "order": [KEY, ...], "runs": {KEY: run}}``. A run's key is its
        notebook's path relative to the top notebook's folder (``/``-separated); ``order`` is
        the tree in depth-first order. Each run is :func:`trajectory` data plus ``key``,
        ``parent_key`` (``None`` for the top) and ``missing`` (``None``, or why it is missing),
        and each sub-call that started a child has ``child_key``. A missing run has only
        ``summary`` (what is known of it) and no steps.
    """
    base = run.path.parent.resolve()
    nodes: dict[str, dict[str, Any]] = {}
    kids: dict[str | None, list[str]] = {}

    def key_of(path: pathlib.Path) -> str:
        return pathlib.Path(os.path.relpath(path.resolve(), base)).as_posix()

    listed = {key_of(base / c.notebook): c for c in run.run.children}
    root_key = key_of(run.path)

    def add(key: str, parent: str | None, node: dict[str, Any]) -> None:
        node.update(key=key, parent_key=parent)
        nodes[key] = node
        kids.setdefault(parent, []).append(key)

    def visit(nb: RunNotebook, key: str, parent: str | None) -> None:
        data = trajectory(nb)
        add(key, parent, {**data, "missing": None})
        subcalls = {
            (st["step"], c["block"], sc["id"]): sc
            for st in data["steps"]
            for c in st["cells"]
            for sc in c["subcalls"]
        }
        for cell, sub, path in nb.children():
            child_key = key_of(path)
            subcalls[(cell.step, cell.block, sub.id)]["child_key"] = child_key
            if child_key in nodes:  # a second link to the same notebook: shown once
                continue
            known = {
                "question": sub.prompt_preview,
                "answer": sub.response,
                "depth": nb.run.depth + 1,
                "parent": {"step": cell.step, "block": cell.block, "subcall": sub.id},
            }
            follow(path, child_key, key, known)

    def follow(path: pathlib.Path, key: str, parent: str | None, known: dict[str, Any]) -> None:
        if len(nodes) >= limit:
            reason = f"not included: this page holds at most {_count(limit, 'run')}"
        else:
            try:
                child = read(path)
            except NotebookFormatError as e:
                reason = str(e)
            else:
                visit(child, key, parent)
                return
        summary = dict(known)
        if key in listed:
            summary.update(listed[key].to_metadata())
        add(key, parent, {"missing": reason, "summary": {**summary, "notebook": key}})

    visit(run, root_key, None)
    for key in sorted(set(listed) - set(nodes), key=_natural):
        if key in nodes:  # reached meanwhile, under a notebook listed before it
            continue
        parent = root_key  # a run whose parent is missing hangs under the top of the tree
        if (base / key).is_file():
            with contextlib.suppress(NotebookFormatError):
                found = read(base / key).parent_path()
                if found is not None and key_of(found) in nodes:
                    parent = key_of(found)
        follow(base / key, key, parent, {})
    order: list[str] = []
    stack = [root_key]
    while stack:
        key = stack.pop()
        order.append(key)
        stack.extend(reversed(kids.get(key, [])))
    return {"root": root_key, "order": order, "runs": nodes}


# -- HTML ----------------------------------------------------------------------------------------


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
