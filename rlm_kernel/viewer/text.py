"""The terminal summary of a run: its facts, one line per step, and its tree of child runs."""

from __future__ import annotations

import os
import unicodedata
from typing import Any

from ..record import read
from .data import _ANSI, _CONTROL, count, natural, trajectory

MIN_WIDTH = 30  # of the terminal summary
LABEL = 10  # columns of the summary's labels ("question  ")


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
    tokens = s["tokens_text"]
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
                count(s["steps"], "step"),
                count(s["subcalls"], "sub-call"),
                f"{tokens['total']} (root {tokens['root']} · sub {tokens['sub']})",
                cost_text(s["cost_usd"]),
                duration,
                *([f"{s['cache_hits']:,} cached"] if s.get("cache_hits") else []),
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
        if step.get("cached"):
            first = f"(cached) {first}"
        lines.append(
            f"{step['step']:>4}  {len(cells):>6}  {exec_text:<12}  {calls:>9}  {latency:>7}  "
            f"{_one_line(first)}"
        )
    if not data["steps"]:
        lines.append("   —  no steps recorded")
    if s.get("children"):
        lines += ["", "child runs"]
        for child in sorted(s["children"], key=lambda c: natural(str(c.get("notebook")))):
            indent = 2 * max(int(child.get("depth") or 2) - int(s.get("depth") or 1), 1)
            parts = [
                str(child.get("notebook")),
                str(child.get("status")),
                count(int(child.get("steps") or 0), "step"),
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
