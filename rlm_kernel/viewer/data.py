"""The viewer's data: a run notebook, or a tree of them, as plain JSON-ready dicts."""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import pathlib
import re
from typing import Any

import nbformat

from ..errors import NotebookFormatError
from ..llm import pricing
from ..record import RunNotebook, StepRecord, SubcallRecord, from_notebook, read
from ..record.format import prose_without_markers
from ..types import Usage, tokens_text

IMAGE_MIMES = ("image/png", "image/jpeg", "image/gif")
PREVIEW_CHARS = 2_000  # of the context preview and the system prompt on the start page
MAX_TREE_RUNS = 500  # runs in one HTML page; the rest are listed as not included

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# Control characters a terminal would act on; tab and newline are kept where text keeps lines.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


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
        "tokens_text": {
            "root": _count(tokens_text([meta.usage["root"]])),
            "sub": _count(tokens_text([meta.usage["sub"]])),
            "total": tokens_text(meta.usage.values()),
        },
        "cost_usd": meta.cost_usd,
        "duration_s": meta.duration_s,
        "started": meta.started,
        "error": meta.error,
        "parent": meta.parent.to_metadata() if meta.parent is not None else None,
        "depth": meta.depth,
        "children": [c.to_metadata() for c in meta.children],
        "cache_hits": int(meta.extra.get("cache_hits") or 0),
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
    # The recorded cost is the truth (None: unpriced, e.g. a local server under an official
    # name); only a step recorded before costs were kept is priced from its tokens.
    if cost is None and entry.has_reply and "cost_usd" not in entry.extra:
        cost = _root_cost(root_model, entry.usage)
    cached = bool(entry.extra.get("cached"))
    # A call the model-call cache answered keeps its original usage, but spent no tokens.
    tokens = 0 if cached else entry.usage.total_tokens
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
        "cached": cached,
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
        "tokens": 0 if record.child or record.cached else record.usage.total_tokens,
        "cost_usd": None if record.child else record.cost_usd,
        "error": f"{error.type}: {error.message}" if error is not None else None,
        "child": record.child,
        "note": record.note,
        "cached": record.cached,
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


def _count(text: str) -> str:
    """``"1,234"``, ``"≥ 1,234"`` or ``"unknown"`` from :func:`tokens_text`'s words."""
    return "unknown" if text == "tokens unknown" else text.removesuffix(" tokens")


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
            reason = f"not included: this page holds at most {count(limit, 'run')}"
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
    for key in sorted(set(listed) - set(nodes), key=natural):
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


def count(n: int, noun: str) -> str:
    """``1 step``, ``2 steps``."""
    return f"{n} {noun}{'s' * (n != 1)}"


def natural(text: str) -> list[Any]:
    """A sort key for notebook paths: a run's children right after it, ``-10`` after ``-9``."""
    stem = text.removesuffix(".ipynb")
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", stem) if p]
