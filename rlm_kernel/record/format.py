"""The conventions of the run notebook (format 2): tags, cell ids, markdown, the setup cell.

Everything a reader might otherwise parse back out of the notebook's text is written here and
only here: the step heading, the marker that stands in a step's prose for each code block, the
setup cell with its ``%rlm_replay NAME`` line, the summary cell (with the tree of child runs) and
the answer cell, and the prompt digest that replay matches sub-calls on.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..types import Usage

FORMAT = 2
READABLE_FORMATS = (1, 2)

SUMMARY_TAG = "rlm-summary"
SETUP_TAG = "rlm-setup"
STEP_TAG = "rlm-step"
CODE_TAG = "rlm-code"
FINAL_TAG = "rlm-final"
ANSWER_TAG = "rlm-answer"
REJECTED_TAG = "rlm-answer-rejected"

SUMMARY_CELL_ID = "rlm-summary"
SETUP_CELL_ID = "rlm-setup"
ANSWER_CELL_ID = "rlm-answer"

FINAL_STATUSES = ("answered", "no_answer", "error", "interrupted")
NOT_RUN_MARKER = "*[code not run: no steps left]*"
SETUP_COMMENT = (
    "# Replays this run without an API key: loads `context` and answers llm_query "
    "from the recorded responses."
)

_PLAIN_ARG = re.compile(r"^[\w.+@=-]+$")
_HEADING = re.compile(r"^### Step \d+\n\n")
_CODE_MARKER = re.compile(r"^\*\[code cell \d+\.\d+ below\]\*[ \t]*$\n?", re.MULTILINE)
_CODE_CELL_ID = re.compile(r"step-(\d+)-code-(\d+)")


def prompt_sha256(prompt: str) -> str:
    """The digest replay matches a sub-call on: hex SHA-256 of the prompt's UTF-8."""
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()


def step_markdown(step: int, prose: str) -> str:
    """The source of a step's markdown cell: a heading, then the model's prose."""
    return f"### Step {step}\n\n{prose}"


def rejected_markdown(step: int, value: str, problems: list[str]) -> str:
    """A note saying a step's final value did not match the answer schema, and why."""
    shown = value if len(value) <= 2000 else value[:1999] + "…"
    lines = "\n".join(f"- {p}" for p in problems)
    fence = "````" if "```" in shown else "```"
    return (
        f"**Answer rejected at step {step}**: it does not match the answer schema, so the "
        f"model was asked again.\n\n{fence}\n{shown}\n{fence}\n\n{lines}"
    )


def step_prose(source: str) -> str:
    """The model's prose of a step's markdown cell (its source without the heading)."""
    return _HEADING.sub("", source, count=1)


def code_marker(step: int, block: int) -> str:
    """What stands in a step's prose where code block ``block`` was."""
    return f"*[code cell {step}.{block} below]*"


def prose_without_markers(prose: str) -> str:
    """A step's prose without the markers of its code blocks (a viewer shows the code there)."""
    text = _CODE_MARKER.sub("", prose)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def parse_code_cell_id(cell_id: str | None) -> tuple[int, int] | None:
    """``(step, block)`` of a code cell id made by :func:`~.records.code_cell_id`, else ``None``."""
    match = _CODE_CELL_ID.fullmatch(cell_id or "")
    return (int(match[1]), int(match[2])) if match else None


def magic_arg(name: str) -> str:
    """A notebook file name as one argument of a magic line (quoted when it needs to be)."""
    return name if _PLAIN_ARG.match(name) else json.dumps(name, ensure_ascii=False)


def replay_line(notebook_name: str) -> str:
    """The setup cell's line that replays the run in ``notebook_name``."""
    return f"%rlm_replay {magic_arg(notebook_name)}"


def setup_source(notebook_name: str, previous: str | None = None) -> str:
    """The setup cell of a run notebook named ``notebook_name``.

    Args:
        notebook_name: the notebook's file name (the cell names its own notebook).
        previous: the cell as it was, whose other lines are kept (a renamed or copied run).
    """
    line = replay_line(notebook_name)
    if previous is None:
        return f"{SETUP_COMMENT}\n%load_ext rlm_kernel\n{line}"
    lines = [line if ln.lstrip().startswith("%rlm_replay") else ln for ln in previous.splitlines()]
    if line not in lines:
        lines.append(line)
    return "\n".join(lines)


def _escape_html(text: str) -> str:
    # Stray HTML in a question or answer must not swallow the rest of the summary when rendered.
    return text.replace("&", "&amp;").replace("<", "&lt;")


def _quote(text: str) -> str:
    return "\n".join(f"> {line}".rstrip() for line in _escape_html(text).splitlines() or [""])


def _table_cell(text: str, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return _escape_html(text).replace("\\", "\\\\").replace("|", "\\|")


def _tokens(usage: Any) -> str:
    u = Usage.from_dict(usage if isinstance(usage, dict) else None)
    if u.all_unknown:
        return f"unknown: the server reported none ({u.calls:,} calls)"
    unknown = f", {u.unknown_calls:,} of them unknown" if u.unknown_calls else ""
    return (
        f"{u.input_tokens:,} in · {u.output_tokens:,} out · "
        f"{u.cache_read_input_tokens:,} cache read · {u.cache_creation_input_tokens:,} cache write "
        f"({u.calls:,} call{'s' * (u.calls != 1)}{unknown})"
    )


def summary_head(meta: Mapping[str, Any], *, has_steps: bool) -> str:
    """The summary cell up to the rows of its steps table; every line ends with a newline."""
    status = str(meta.get("status"))
    if meta.get("stop_reason"):
        status += f" ({meta['stop_reason']})"
    models = meta.get("models") or {}
    usage = meta.get("usage") or {}
    cost = meta.get("cost_usd")
    if meta.get("duration_s") is not None:
        time_text = f"{meta['duration_s']:.1f} s, started {meta.get('started')}"
    else:
        time_text = f"started {meta.get('started')}, still running"
    rows = [
        ("Status", status),
        ("Models", f"root {models.get('root') or '—'} · sub {models.get('sub') or '—'}"),
        ("Steps", str(meta.get("steps"))),
        ("Sub-calls", str(meta.get("subcalls"))),
        ("Tokens (root)", _tokens(usage.get("root"))),
        ("Tokens (sub)", _tokens(usage.get("sub"))),
        ("Cost", "unknown" if cost is None else f"${cost:.4f}"),
        ("Time", time_text),
    ]
    if meta.get("cache_hits"):
        hits = int(meta["cache_hits"])
        rows.append(
            (
                "Cached",
                f"{hits:,} model call{'' if hits == 1 else 's'} answered by the "
                "model-call cache (no tokens, no cost)",
            )
        )
    if meta.get("error"):
        rows.append(("Error", str(meta["error"])))
    if (meta.get("depth") or 1) > 1:
        rows.append(("Depth", str(meta["depth"])))
    parent = meta.get("parent")
    if isinstance(parent, dict):
        where = f"step {parent.get('step')}"
        if parent.get("block") is not None:
            where = (
                f"cell {parent.get('step')}.{parent.get('block')}, sub-call {parent.get('subcall')}"
            )
        rows.append(("Parent", f"{parent.get('notebook')} {where}"))

    answer = meta.get("answer")
    if answer is not None:
        answer_text = _quote(str(answer))
    elif meta.get("status") == "running":
        answer_text = "_No answer yet: the run is in progress._"
    else:
        answer_text = "_The run ended without an answer._"

    parts = [
        f"## RLM run `{meta.get('run_id')}`",
        "",
        "**Question**",
        "",
        _quote(str(meta.get("question") or "")),
        "",
        "**Answer**",
        "",
        answer_text,
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {_table_cell(value, 200)} |" for name, value in rows),
        "",
        *_children_table(meta.get("children") or []),
        "**Steps**",
        "",
    ]
    if has_steps:
        parts += [
            "| Step | Code blocks | Exec | Sub-calls | Latency |",
            "|---:|---:|---|---:|---:|",
        ]
    else:
        parts.append("_No steps recorded yet._")
    return "\n".join(parts) + "\n"


def _children_table(children: Sequence[Mapping[str, Any]]) -> list[str]:
    """The tree of child runs: one row each, indented by depth, linking its notebook."""
    if not children:
        return []
    rows = [
        "**Child runs**",
        "",
        "| Child | Question | Status | Steps | Tokens | Cost |",
        "|---|---|---|---:|---:|---:|",
    ]
    for child in children:
        depth = int(child.get("depth") or 2)
        path = str(child.get("notebook") or "")
        name = f"{'↳ ' * (depth - 2)}[{_table_cell(path.rsplit('/', 1)[-1])}]({_link(path)})"
        cost = child.get("cost_usd")
        cells = [
            _table_cell(str(child.get("question") or ""), 60),
            _table_cell(str(child.get("status"))),
            str(child.get("steps")),
            f"{int(child.get('tokens') or 0):,}",
            "unknown" if cost is None else f"${cost:.4f}",
        ]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*rows, ""]


def _link(path: str) -> str:
    # A markdown link target: spaces and parentheses would end it early.
    return path.replace(" ", "%20").replace("(", "%28").replace(")", "%29")


def answer_source(
    answer: str | None, status: str, stop_reason: str | None, error: str | None
) -> str:
    if answer is not None:
        return f"## Answer\n\n{answer}"
    why = f"status `{status}`" + (f", stop reason `{stop_reason}`" if stop_reason else "")
    text = f"## Answer\n\n_The run ended without an answer ({why})._"
    if error:
        fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", error)), default=0))
        text += f"\n\n{fence}\n{error}\n{fence}"
    return text


class StepStats:
    """What the summary table shows for one step."""

    __slots__ = ("latency_s", "statuses", "step", "subcalls")

    def __init__(self, step: int) -> None:
        self.step = step
        self.latency_s: float | None = None
        self.statuses: list[str] = []
        self.subcalls = 0

    def render(self) -> str:
        """The step's row of the summary table, newline included."""
        latency = "—" if self.latency_s is None else f"{self.latency_s:.1f} s"
        counts: dict[str, int] = {}
        for status in self.statuses:
            counts[status] = counts.get(status, 0) + 1
        exec_text = ", ".join(s if n == 1 else f"{s} ×{n}" for s, n in counts.items())
        cells = [str(self.step), str(len(self.statuses)), exec_text or "—", str(self.subcalls)]
        # _table_cell folds every line break, so the row is exactly one source line.
        return "| " + " | ".join(_table_cell(c) for c in [*cells, latency]) + " |\n"
