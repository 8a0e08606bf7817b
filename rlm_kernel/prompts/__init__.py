"""The words the root model reads: the system prompt and the per-step messages (pure).

The system prompt is a template, :data:`SYSTEM_PROMPT` or the user's own
(``RLM(system_prompt=...)``), whose ``{name}`` placeholders (:data:`PLACEHOLDERS`) are filled for
each run. Only those exact names are replaced: any other text, braces included, stays as written,
so a template can hold Python examples with f-strings and dict literals.

Every sentence about the REPL must be true for the run it is rendered for: ``rlm_query`` is
described by what it does at the run's depth, a function is named only if the kernel runtime
installs it (``tests/test_prompts.py`` checks both ways), and each limit stated is one that
applies.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .. import runtime
from ..context import ContextInfo
from ..types import Limits
from .shape import (
    CHARS_PER_TOKEN_ESTIMATE,
    CONTEXT_WINDOWS,
    DEFAULT_CONTEXT_WINDOW,
    Sizing,
    context_window,
    describe_context,
    examples,
    fence,
    sizing_text,
    subcall_sizing,
)

__all__ = [
    "CONTEXT_WINDOWS",
    "DEFAULT_CONTEXT_WINDOW",
    "PLACEHOLDERS",
    "SYSTEM_PROMPT",
    "VARIABLES_EXPRESSION",
    "VARIABLES_PROBE",
    "BlockReport",
    "Sizing",
    "Spent",
    "cache_view",
    "check_template",
    "context_window",
    "describe_context",
    "estimate_tokens",
    "feedback",
    "first_message",
    "kernel_names",
    "last_call",
    "parse_variables",
    "short_question",
    "subcall_sizing",
    "system_prompt",
    "variables_from_expression",
]
QUESTION_CHARS = 300  # a longer question is cut in the per-step reminder
VARIABLES_SHOWN = 30

# Prints the model's variable names as JSON: what SHOW_VARS() lists, less `context`, `answer`
# and the names the shell itself defines (`user_ns_hidden`: In, Out, ipykernel's `open`, ...).
# One expression, so the probe leaves no variable behind.
VARIABLES_EXPRESSION = (
    "__import__('json').dumps(sorted(n for n, v in get_ipython().user_ns.items() "
    "if not n.startswith('_') and n not in get_ipython().user_ns_hidden "
    "and n not in ('context', 'answer') and type(v).__name__ != 'module' "
    "and _rlm_functions.get(n) is not v))"
)
VARIABLES_PROBE = f"print({VARIABLES_EXPRESSION})"


PLACEHOLDERS = (
    "context_description",
    "repl_functions",
    "run_limits",
    "subcall_sizing",
    "examples",
    "depth_note",
    "max_steps",
    "max_output_chars",
    "chunk_chars",
    "sub_model",
)

SYSTEM_PROMPT = """\
You answer a question about a context held in a persistent Python REPL (a Jupyter kernel) as the \
variable `context`. You never see the context itself, only what your code prints: look at it, \
filter it with code, and hand the parts that need reading to sub-models, whose answers you \
combine in code.{depth_note}

## The context
{context_description}

## Running code
Write Python in fenced ```repl blocks. The blocks of a reply run in order in the same kernel; \
variables persist across blocks and replies. After each reply you are shown what its blocks \
printed, at most {max_output_chars} characters in all (shared by the blocks; head and tail \
kept). So print sizes, counts and short samples, never whole chunks; keep long text in variables.

## Functions in the REPL
{repl_functions}

## Limits of this run
{run_limits}

## Sizing sub-calls
{subcall_sizing}

## Examples
{examples}

## Finishing
- `FINAL_VAR(name)` on a line of its own, outside code: the run ends with the value of the \
kernel variable `name` (as str). Best for anything computed; it may follow the code that sets it \
in the same reply.
- `FINAL(text)` on a line of its own, outside code: the run ends with `text` taken literally. \
`FINAL(result)` answers the word "result", not a variable: use it only for an answer you write \
out in full, after you have seen the facts it rests on printed.
- In code, `FINAL(value)`, `FINAL_VAR("name")` and `answer["content"] = value; \
answer["ready"] = True` finish too, when the cell runs.
- If a block of the reply fails, a FINAL line in that reply is not accepted: you see the error \
first.
- Answer the question itself, explicitly and in the format it asks for, without commentary.

## How to work
1. Look first: type, size and structure of `context`, and a few samples.
2. Filter with code (`re`, slicing, counting): exact, fast and free.
3. Send what needs understanding to sub-models in a few large batched prompts; keep their \
answers in variables and combine them in code.
4. Check the result against the context before you answer.
You have {max_steps} replies."""

FIRST_MESSAGE = """\
Question: {question}

You have not looked at `context` yet: start by exploring it with code in ```repl blocks. Finish \
with FINAL_VAR(name) or FINAL(text) on a line of its own once you know the answer."""

NO_CODE_MESSAGE = "Your reply had no ```repl block and no FINAL line, so nothing ran."

FINAL_REJECTED_NOTE = """\
Your FINAL line was not accepted: a block of the same reply did not run cleanly, so the answer was \
written without seeing its result. Look at the output above, then answer again."""

CUT_OFF_NOTE = """\
Your reply was cut off at the output-token limit (an unfinished code block does not run). \
Write shorter replies: keep long text in variables, not in your messages."""

_STOPPED = {
    "max_steps": "That was your last step: no more code will run.",
    "max_cost": "The run's cost budget is used up: no more code or sub-calls will run.",
    "timeout": "The run's time is up: no more code or sub-calls will run.",
}

LAST_CALL_MESSAGE = """\
{stopped} Reply now with your best answer to the question from what you have found, in the \
format it asks for, on a line of its own: FINAL_VAR(name) still works (it only reads the \
variable), or FINAL(text) with the answer written out. Code blocks will not run.

Question: {question}"""


@dataclass(frozen=True)
class BlockReport:
    """What the model is shown about one block it wrote."""

    status: str
    shown: str
    output_chars: int


@dataclass(frozen=True)
class Spent:
    """What a run has used so far: the feedback's "spent / left" line, a child's budgets.

    Attributes:
        steps: root-model replies so far.
        subcalls: sub-calls so far (a budget shared with child runs).
        cost_usd: dollars of the priced calls so far.
        elapsed_s: seconds since the run started.
        unpriced: some call's model has no known price, so ``cost_usd`` is a lower bound.
    """

    steps: int = 0
    subcalls: int = 0
    cost_usd: float = 0.0
    elapsed_s: float = 0.0
    unpriced: bool = False


# --------------------------------------------------------------------------- the REPL


@functools.cache
def kernel_names() -> frozenset[str]:
    """The public names the kernel runtime installs for the model's code."""
    namespace: dict[str, object] = {}
    runtime.install(namespace, None)
    return frozenset(n for n in namespace if not n.startswith("_"))


def _functions(
    *, sub_model: str, models: Sequence[str], depth: int, max_depth: int, limits: Limits
) -> str:
    others = [m for m in models if m and m != sub_model]
    pick = f' "{others[0]}" (the root model) works too' if others else " none other in this run"
    lines = [
        f"- `llm_query(prompt, model=None) -> str`: one call to the sub-model {sub_model}. It "
        "sees only `prompt` (none of your variables, none of this conversation), so put in it "
        f"the instruction, the question and the text to read. `model=` names another model:{pick}.",
        "- `llm_query_batched(prompts, model=None) -> list[str]`: independent prompts run "
        f"concurrently, {limits.max_concurrency} at a time; answers in order. Use it instead "
        "of a loop of `llm_query`.",
    ]
    if depth < max_depth:
        lines.append(
            "- `rlm_query(prompt, context=None) -> str`: starts a child RLM at depth "
            f"{depth + 1} of {max_depth} with its own REPL, where `context` is the value you "
            "pass and `prompt` its question. It explores with code and sub-calls as you do, "
            "spends this run's budgets and returns its final answer: use it for a sub-problem "
            "that needs exploring, not for what one `llm_query` answers."
        )
    else:
        lines.append(
            "- `rlm_query(prompt, context=None) -> str`: at this depth (the maximum, "
            f"{max_depth}) a plain sub-model call like `llm_query`; `context`, if given, is "
            "appended to the prompt as text (a list or dict as JSON), so it must fit one call."
        )
    if "rlm_query_batched" in kernel_names():
        what = "child RLMs, run concurrently" if depth < max_depth else "plain sub-model calls"
        lines.append(
            "- `rlm_query_batched(prompts, contexts=None) -> list[str]`: several `rlm_query` "
            f"calls at once ({what}); answers in order."
        )
    lines += [
        "- `SHOW_VARS()`: prints your variables with their types and sizes.",
        "A sub-call that fails after retries raises `SubcallError`; once the sub-call, cost or "
        "time budget is used up, sub-calls raise `BudgetExceeded`. Catch them or change plan. "
        "When a batch fails, `e.partial` holds its answers in order (`None` where a prompt "
        "failed) and `e.errors` maps each failed index to its message: the answers that arrived "
        "are kept there.",
    ]
    return "\n".join(lines)


def _tools(described: str, limits: Limits) -> str:
    if not described:
        return ""
    deadline = (
        f"each call may take at most {limits.tool_timeout:g} s"
        if limits.tool_timeout
        else "they have no deadline of their own"
    )
    return (
        "\n\nHost tools: functions that run on the host, not in the REPL; call them by name "
        "with JSON values (str, numbers, bool, None, lists, dicts) and get JSON values back. "
        f"They are not sub-calls (no tokens, no sub-call budget), and {deadline}. "
        "A failure in a tool raises `ToolError` (`e.type` is the tool's exception class, "
        "`e.message` its message).\n" + described
    )


def _money(x: float) -> str:
    # Cents, unless the sum is small enough that cents would show nothing.
    return f"${x:,.2f}" if x >= 0.1 or x == 0 else f"${x:.4f}"


def _limits(limits: Limits, spent: Spent | None) -> str:
    def left(text: str) -> str:
        return f" ({text} left)" if spent else ""

    used = spent or Spent()
    lines = [
        f"- {limits.max_steps} replies; after the last one you are asked for your answer, and "
        "code no longer runs."
    ]
    if limits.max_subcalls is not None:
        calls_left = f"{max(0, limits.max_subcalls - used.subcalls):,}"
        calls = f"{limits.max_subcalls:,} sub-call{'s' * (limits.max_subcalls != 1)}"
        lines.append(f"- {calls} in the whole run{left(calls_left)}.")
    if limits.max_cost_usd is not None:
        money_left = _money(max(0.0, limits.max_cost_usd - used.cost_usd))
        lines.append(
            f"- {_money(limits.max_cost_usd)} for the whole run, your replies and sub-calls "
            f"together{left(money_left)}."
        )
    if limits.timeout is not None:
        time_left = f"{max(0.0, limits.timeout - used.elapsed_s):,.0f} s"
        lines.append(f"- {limits.timeout:,.0f} s for the whole run{left(time_left)}.")
    if limits.cell_timeout is not None:
        lines.append(
            f"- {limits.cell_timeout:g} s per block, then it is interrupted: what it assigned "
            "before stays, the rest is lost (an interrupted `x = llm_query_batched(...)` leaves "
            "`x` unset and its answers gone), so split long work over several blocks."
        )
    lines += [
        f"- Each sub-answer is cut at {limits.sub_max_tokens:,} tokens: ask for terse answers.",
        f"- Each of your replies is cut at {limits.max_tokens:,} tokens; a block cut off there "
        "does not run.",
        "Each step's feedback shows what is spent and what is left. When the cost or time "
        "budget runs out, you are asked for your answer at once.",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- rendering


_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


def check_template(template: object) -> str:
    """Return ``template`` if it can be a system prompt; raise ``ValueError`` saying why not."""
    if not isinstance(template, str):
        raise ValueError(f"system_prompt must be a str template, not {type(template).__name__}")
    if not template.strip():
        raise ValueError("system_prompt is empty; give a template or leave it out")
    return template


def system_prompt(
    info: ContextInfo,
    limits: Limits,
    *,
    sub_model: str,
    models: Sequence[str] = (),
    depth: int = 1,
    max_depth: int | None = None,
    spent: Spent | None = None,
    template: str | None = None,
    tools: str = "",
    answer_schema: str = "",
) -> str:
    """The system prompt of one run, true for its context, models, depth and limits.

    Args:
        info: the prepared context.
        limits: the run's limits; those that are set are stated.
        sub_model: the name of the model ``llm_query`` calls by default.
        models: other model names ``model=`` accepts (the root model's first).
        depth: this run's recursion depth, 1 for the root run.
        max_depth: the deepest run; ``rlm_query`` at this depth is a plain sub-model call.
            ``None`` takes ``limits.max_depth``.
        spent: for a child run, what the shared budgets have used already.
        template: a template with the placeholders of :data:`PLACEHOLDERS`; ``None`` uses
            :data:`SYSTEM_PROMPT`.
        tools: the host tools, one entry each (``rlm_kernel.tools.ToolBox.describe``).
        answer_schema: the JSON Schema the final answer must match, as JSON text.
    """
    top = limits.max_depth if max_depth is None else max_depth
    sizing = subcall_sizing(sub_model, limits)
    depth_note = (
        f" This is a child run (depth {depth} of {top}): your final answer goes back, as a str, "
        "to the code that called `rlm_query`, so make it short and exactly in the format asked."
        if depth > 1
        else ""
    )
    values = {
        "context_description": describe_context(
            info, sizing, max_output_chars=limits.max_output_chars
        ),
        "repl_functions": _functions(
            sub_model=sub_model, models=models, depth=depth, max_depth=top, limits=limits
        )
        + _tools(tools, limits),
        "run_limits": _limits(limits, spent),
        "subcall_sizing": sizing_text(sizing, sub_model),
        "examples": examples(info, sizing),
        "depth_note": depth_note,
        "max_steps": str(limits.max_steps),
        "max_output_chars": f"{limits.max_output_chars:,}",
        "chunk_chars": f"{sizing.target_chars:,}",
        "sub_model": sub_model,
    }
    text = _PLACEHOLDER.sub(lambda m: values[m.group(1)], template or SYSTEM_PROMPT)
    if answer_schema:
        text += ANSWER_SCHEMA.format(schema=answer_schema)
    return text


ANSWER_SCHEMA = """

## The form of the answer
The final answer must be a JSON value matching this JSON Schema. Finish with \
`FINAL(json.dumps(value))` in code (or `FINAL_VAR` of a variable holding that JSON text); an \
answer that does not match is rejected, you are told why, and you answer again.
```json
{schema}
```"""


def answer_rejected(problems: Sequence[str]) -> str:
    """What the model is told when its final answer does not match the answer schema."""
    listed = "\n".join(f"- {p}" for p in problems)
    return (
        "Your final answer was rejected: it does not match the answer schema.\n"
        f"{listed}\nFix these and finish again with the corrected JSON."
    )


def estimate_tokens(text: str) -> int:
    """A prompt's size in tokens, counted as characters / 4 (see docs/prompt.md)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN_ESTIMATE)


def first_message(question: str) -> str:
    """The first user turn: the question, and a nudge to look before answering."""
    return FIRST_MESSAGE.format(question=question)


# --------------------------------------------------------------------------- each step


def short_question(question: str) -> str:
    """The question as restated after each step: whole, or its start when it is long."""
    text = " ".join(question.split())
    if len(text) <= QUESTION_CHARS:
        return text
    return text[: QUESTION_CHARS - 60].rstrip() + " ... (the full question is in the first message)"


def variables_from_expression(result: object) -> list[str] | None:
    """The names of a kernel's ``user_expressions`` result for :data:`VARIABLES_EXPRESSION`."""
    if not isinstance(result, dict) or result.get("status") != "ok":
        return None
    text = (result.get("data") or {}).get("text/plain")
    try:
        value = ast.literal_eval(text) if isinstance(text, str) else None
    except (ValueError, SyntaxError):
        return None
    return parse_variables(value) if isinstance(value, str) else None


def parse_variables(printed: str) -> list[str] | None:
    """The names :data:`VARIABLES_PROBE` printed, or ``None`` if its output is not that."""
    try:
        names = json.loads(printed.strip())
    except ValueError:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return names


def _spent_line(step: int, max_steps: int, spent: Spent, limits: Limits) -> str:
    parts = [f"step {step} of {max_steps}"]
    calls = f"{spent.subcalls:,} sub-call{'' if spent.subcalls == 1 else 's'}"
    if limits.max_subcalls is not None:
        calls += f" ({max(0, limits.max_subcalls - spent.subcalls):,} left)"
    parts.append(calls)
    if spent.unpriced and not spent.cost_usd:
        cost = "cost unknown (unpriced models)"
    else:
        cost = f"{_money(spent.cost_usd)}{' + unpriced calls' if spent.unpriced else ''}"
    if limits.max_cost_usd is not None:
        cost += f" ({_money(max(0.0, limits.max_cost_usd - spent.cost_usd))} left)"
    parts.append(cost)
    time = f"{spent.elapsed_s:,.0f} s"
    if limits.timeout is not None:
        time += f" ({max(0.0, limits.timeout - spent.elapsed_s):,.0f} s left)"
    parts.append(time)
    return "Spent: " + " · ".join(parts) + "."


def _variables_line(names: Sequence[str]) -> str:
    if not names:
        return "Your variables: none yet (besides `context`)."
    shown = ", ".join(names[:VARIABLES_SHOWN])
    more = len(names) - VARIABLES_SHOWN
    extra = f" and {more:,} more (SHOW_VARS() lists them)" if more > 0 else ""
    return f"Your variables: {shown}{extra}."


def feedback(
    reports: Sequence[BlockReport],
    *,
    step: int,
    max_steps: int,
    final_rejected: bool = False,
    cut_off: bool = False,
    question: str | None = None,
    variables: Sequence[str] | None = None,
    spent: Spent | None = None,
    limits: Limits | None = None,
    stop: str | None = None,
) -> str:
    """The user turn that follows a reply: each block's output, then where the run stands.

    Args:
        reports: what each block of the reply showed.
        step: the reply just taken.
        max_steps: replies the run allows.
        final_rejected: the reply's FINAL line was not taken (a block failed).
        cut_off: the reply hit the output-token limit.
        question: restated (short form) at the end, to keep it in view.
        variables: the names the model's code has made, as they are now.
        spent: what the run has used; with ``limits``, what is left too.
        limits: the run's limits.
        stop: ``max_steps``, ``max_cost`` or ``timeout`` when this turn is the last call: it
            then asks for the answer instead of more code.
    """
    parts = [CUT_OFF_NOTE] if cut_off else []
    if not reports and stop is None:
        parts.append(NO_CODE_MESSAGE)
    for n, r in enumerate(reports, start=1):
        header = f"Block {n} ({r.status}, {r.output_chars:,} characters of output):"
        body = r.shown if r.shown.strip() else "(no output)"
        bar = fence(body)
        parts.append(f"{header}\n{bar}\n{body}\n{bar}")
    if final_rejected:
        parts.append(FINAL_REJECTED_NOTE)
    status = []
    if spent is not None:
        status.append(_spent_line(step, max_steps, spent, limits or Limits(max_steps=max_steps)))
    if variables is not None:
        status.append(_variables_line(variables))
    if status:
        parts.append("\n".join(status))
    if stop is not None:
        parts.append(last_call(question or "", reason=stop))
        return "\n\n".join(parts)
    if question:
        parts.append(f"Question: {short_question(question)}")
    left = max_steps - step
    parts.append(
        f"{left} repl step{'s' if left != 1 else ''} left. Continue, or finish with "
        "FINAL_VAR(name) or FINAL(text) on a line of its own."
    )
    return "\n\n".join(parts)


def last_call(question: str, *, reason: str = "max_steps") -> str:
    """The turn that asks for the answer when steps, money or time have run out."""
    stopped = _STOPPED.get(reason, _STOPPED["max_steps"])
    return LAST_CALL_MESSAGE.format(stopped=stopped, question=short_question(question))


# What a feedback or a child's system prompt says of the run so far (clock, money, variables):
# it differs between two runs that are otherwise the same (and a fork's rebuilt history leaves
# it out), while the earlier turns already decide it, so the model-call cache ignores it.
_VOLATILE = re.compile(
    r"^(?:Spent|Your variables): .*(?:\n|$)|\(\$[\d,.]+ left\)|\([\d,.]+ s left\)", re.MULTILINE
)
_BLANK_LINES = re.compile(r"\n{3,}")


def cache_view(text: str) -> str:
    """``text`` without the run's status so far (time, cost, variables), for cache keys."""
    return _BLANK_LINES.sub("\n\n", _VOLATILE.sub("", text))
