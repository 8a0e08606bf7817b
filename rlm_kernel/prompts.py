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

import functools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from . import runtime
from .context import ContextInfo
from .types import Limits

CHARS_PER_TOKEN_ESTIMATE = 4  # how docs/prompt.md and the tests count a prompt's tokens

# Input context windows in tokens, by model-name prefix (the longest matching prefix wins), from
# the providers' model pages. A name is matched without its ``provider:`` part and any folder
# (``Qwen/Qwen3-Coder-480B`` → ``qwen3-coder-480b``).
CONTEXT_WINDOWS: dict[str, int] = {
    "claude-": 200_000,
    "gpt-5": 272_000,
    "gpt-4.1": 1_000_000,
    "gpt-4o": 128_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    "gemini-": 1_000_000,
    "qwen3-coder": 256_000,
    "qwen3": 128_000,
    "llama-3.1": 128_000,
    "llama-3.3": 128_000,
    "deepseek": 128_000,
    "mistral-large": 128_000,
}
DEFAULT_CONTEXT_WINDOW = 32_000  # unknown models, local ones included: assume a small window

# Sub-call sizing. Text is counted at 3 characters a token (code, JSON and non-English text run
# denser than English prose's 4), a prompt's instructions take a few thousand tokens, and the
# answer's tokens share the window. The target is a third of what fits, capped: a sub-model reads
# a 200K-character chunk well, and the RLM paper's sub-models handled about 500K.
SUBCALL_CHARS_PER_TOKEN = 3
SUBCALL_OVERHEAD_TOKENS = 2_000
MIN_SUBCALL_CHARS = 8_000
TARGET_CAP_CHARS = 200_000
BATCH_ROUNDS = 8  # a batch holds at most this many rounds of max_concurrency prompts

QUESTION_CHARS = 300  # a longer question is cut in the per-step reminder
VARIABLES_SHOWN = 30

# Prints the model's variable names as JSON: what SHOW_VARS() lists, minus `context`/`answer`.
# One expression, so the probe itself leaves no variable behind.
VARIABLES_PROBE = (
    "print(__import__('json').dumps(sorted(n for n, v in get_ipython().user_ns.items() "
    "if not n.startswith('_') and n not in ('In', 'Out', 'exit', 'quit', 'get_ipython', "
    "'context', 'answer') and type(v).__name__ != 'module' "
    "and _rlm_functions.get(n) is not v)))"
)

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
- If a block of the reply fails, a FINAL line in that reply is not taken: you see the error first.
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
with FINAL_VAR(name) or FINAL(answer) on a line of its own once you know the answer."""

NO_CODE_MESSAGE = """\
Your reply had no ```repl block and no FINAL line, so nothing ran. Write code to continue, or \
finish with FINAL_VAR(name) or FINAL(answer) on a line of its own."""

FINAL_REJECTED_NOTE = """\
Your FINAL line was not taken: a block of the same reply did not run cleanly, so the answer was \
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
variable), or FINAL(answer) with the answer written out. Code blocks will not run.

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


@dataclass(frozen=True)
class Sizing:
    """How much text one sub-call should carry, derived from the sub-model's window."""

    window_tokens: int
    window_known: bool
    max_chars: int
    target_chars: int
    batch_ceiling: int


# --------------------------------------------------------------------------- sizing


def context_window(model: str) -> tuple[int, bool]:
    """The input window (tokens) of a model by name, and whether the table knows it."""
    name = model.rpartition(":")[2].rpartition("/")[2].lower()
    matches = [prefix for prefix in CONTEXT_WINDOWS if name.startswith(prefix)]
    if not matches:
        return DEFAULT_CONTEXT_WINDOW, False
    return CONTEXT_WINDOWS[max(matches, key=len)], True


def _round_down(n: float) -> int:
    """``n`` rounded down to two significant digits: 786,000 → 780,000."""
    n = int(n)
    if n < 100:
        return n
    step = 10 ** (len(str(n)) - 2)
    return n // step * step


def subcall_sizing(sub_model: str, limits: Limits) -> Sizing:
    """The per-call target and ceiling for ``sub_model``, and the prompts one batch may hold."""
    window, known = context_window(sub_model)
    usable = window - limits.sub_max_tokens - SUBCALL_OVERHEAD_TOKENS
    max_chars = max(MIN_SUBCALL_CHARS, _round_down(usable * SUBCALL_CHARS_PER_TOKEN))
    target = _round_down(min(max_chars / 3, TARGET_CAP_CHARS))
    return Sizing(window, known, max_chars, target, BATCH_ROUNDS * limits.max_concurrency)


# --------------------------------------------------------------------------- the context


def _fence(text: str) -> str:
    """A backtick fence longer than any run of backticks in ``text``."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _samples(info: ContextInfo) -> str:
    if not info.samples:
        return ""
    lines = []
    for expr, text in info.samples:
        lines.append(f">>> print({expr})" if info.type == "str" else f">>> {expr}")
        lines.append(text)
    body = "\n".join(lines)
    fence = _fence(body)
    return f"\n{fence}text\n{body}\n{fence}"


def _elements(info: ContextInfo) -> str:
    types = info.element_types
    noun = "value" if info.type == "dict" else "element"
    if not types:
        return ""
    if len(types) == 1:
        kind = types[0][0]
        if kind == "dict" and info.common_keys:
            keys = ", ".join(repr(k) for k in info.common_keys)
            return f" Each {noun} is a dict with the keys {keys}."
        return f" Each {noun} is a {kind}."
    counts = ", ".join(f"{count:,} {kind}" for kind, count in types)
    return f" Element types: {counts}."


def _lengths(info: ContextInfo, noun: str) -> str:
    if info.length_stats is None:
        return ""
    low, median, high = info.length_stats
    first = ", ".join(f"{n:,}" for n in info.lengths[:10])
    more = ", ..." if (info.items or 0) > 10 else ""
    return (
        f" {noun.capitalize()} lengths in characters: min {low:,}, median {median:,}, max {high:,} "
        f"(first: {first}{more})."
    )


def _fit(chars: int, sizing: Sizing, max_output_chars: int) -> str:
    target = sizing.target_chars
    if chars == 0:
        return "It is empty."
    if chars <= max_output_chars // 2:
        return "It is small: print it whole and read it yourself; sub-calls are not needed."
    if chars <= target:
        return f"It fits in one sub-call (the target is about {target:,} characters per call)."
    calls = math.ceil(chars / target)
    if calls <= BATCH_ROUNDS:
        return (
            f"It is about {calls} sub-calls' worth at about {target:,} characters each: one "
            "`llm_query_batched` can read all of it if the question needs that."
        )
    return (
        f"It is far larger than one sub-call: reading it all would take about {calls:,} calls "
        f"of about {target:,} characters, so filter it with code first and send sub-models only "
        "the parts that matter."
    )


def describe_context(info: ContextInfo, sizing: Sizing, *, max_output_chars: int) -> str:
    """What the model is told about ``context``: type, sizes, shape, fit and a short preview."""
    chars = info.text_chars
    tokens = math.ceil(chars / CHARS_PER_TOKEN_ESTIMATE)
    size = f"{chars:,} characters (about {tokens:,} tokens)"
    if info.type == "str":
        where = ", read from a text file" if info.origin == "text_file" else ""
        head = f"`context` is a str of {size}{where}."
    else:
        n = info.items or 0
        noun = "value" if info.type == "dict" else "element"
        head = f"`context` is a {info.type} of {n:,} {_plural(n, 'entry' if noun == 'value' else noun)}"
        if info.origin == "files":
            names = ", ".join(info.file_names[:10]) + (", ..." if len(info.file_names) > 10 else "")
            head += f": the contents of the files given, in order ({names})."
        elif info.origin == "directory":
            head += (
                " read from a directory: each key is a file's path relative to it, each value "
                "the file's text."
            )
        else:
            head += " read from a JSON file." if info.origin == "json_file" else "."
        all_str = info.element_types in ((), (("str", n),))
        counted = "" if all_str else ": a str by its length, anything else as its JSON text"
        head += f" Its {noun}s hold {size} in all{counted}."
        head += _elements(info) + _lengths(info, noun)
        if info.type == "dict" and info.key_sample:
            shown = list(info.key_sample)
            if n > len(shown):
                shown.insert(len(shown) - 2, "...")
            head += " Keys: " + ", ".join(k if k == "..." else repr(k) for k in shown) + "."
    return f"{head} {_fit(chars, sizing, max_output_chars)}{_samples(info)}"


def _plural(n: int, noun: str) -> str:
    if n == 1:
        return noun
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"


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


def _money(x: float) -> str:
    return f"${x:,.2f}" if x >= 1 else f"${x:.4f}"


def _limits(limits: Limits, spent: Spent | None) -> str:
    def left(cap: float, used: float, fmt: str) -> str:
        return f" ({fmt.format(max(0.0, cap - used))} left)" if spent else ""

    lines = [
        f"- {limits.max_steps} replies; after the last one you are asked for your answer, and "
        "code no longer runs."
    ]
    if limits.max_subcalls is not None:
        used = spent.subcalls if spent else 0
        lines.append(
            f"- {limits.max_subcalls:,} sub-calls in the whole run"
            + left(limits.max_subcalls, used, "{:,.0f}")
            + "."
        )
    if limits.max_cost_usd is not None:
        used_usd = spent.cost_usd if spent else 0.0
        lines.append(
            f"- {_money(limits.max_cost_usd)} for the whole run, your replies and sub-calls "
            f"together{left(limits.max_cost_usd, used_usd, '${:.4f}')}."
        )
    if limits.timeout is not None:
        used_s = spent.elapsed_s if spent else 0.0
        lines.append(
            f"- {limits.timeout:,.0f} s for the whole run{left(limits.timeout, used_s, '{:,.0f} s')}."
        )
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


def _sizing(sizing: Sizing, sub_model: str) -> str:
    window = (
        f"its window is {sizing.window_tokens:,} tokens"
        if sizing.window_known
        else "its window is not known, so a small one is assumed"
    )
    records = math.ceil(2_000_000 / sizing.target_chars)
    return (
        f"{sub_model} reads at most about {sizing.max_chars:,} characters per call ({window}). "
        f"Aim for about {sizing.target_chars:,} characters per prompt: a few large prompts are "
        "faster and cheaper than many small ones, and see more at once. Never send one prompt "
        "per line, record or short item; group items until a prompt nears the target (2,000,000 "
        f"characters of records make about {records:,} prompts, not one per record). Put at most "
        f"{sizing.batch_ceiling:,} prompts in one `llm_query_batched`; needing more means "
        "filtering with code first, or grouping more. If all that matters fits in one prompt, "
        "make one `llm_query`."
    )


_REGEX_EXAMPLE = {
    "str": """\
import re
hits = [m.start() for m in re.finditer(r"(?i)refund", context)]
print(len(hits))
for at in hits[:3]:
    print(repr(context[max(0, at - 150):at + 150]))""",
    "list": """\
import re
hits = [i for i, x in enumerate(context) if re.search(r"(?i)refund", str(x))]
print(len(hits), hits[:10])
print(str(context[hits[0]])[:300] if hits else "none")""",
    "dict": """\
import re
hits = [k for k, v in context.items() if re.search(r"(?i)refund", str(v))]
print(len(hits), hits[:10])""",
}

_CHUNK_EXAMPLE = {
    "str": """\
size = {chunk_chars}
chunks = [context[i:i + size] for i in range(0, len(context), size)]
prompts = [
    "Which tickets in the text below report a billing problem? Reply with their ids, "
    "one per line, or NONE if there are none; nothing else.\\n\\n" + chunk
    for chunk in chunks
]""",
    "list": """\
import json
per = {per}  # elements per prompt: about {chunk_chars} characters in all
groups = [context[i:i + per] for i in range(0, len(context), per)]
prompts = [
    "Which tickets below report a billing problem? Reply with their ids, one per line, "
    "or NONE if there are none; nothing else.\\n\\n"
    + "\\n".join(x if isinstance(x, str) else json.dumps(x) for x in group)
    for group in groups
]""",
    "dict": """\
items = list(context.items())
per = {per}  # entries per prompt: about {chunk_chars} characters
groups = [items[i:i + per] for i in range(0, len(items), per)]
prompts = [
    "Which documents below report a billing problem? Reply with their names, one per "
    "line, or NONE if there are none; nothing else.\\n\\n"
    + "\\n\\n".join(f"=== {k} ===\\n{v}" for k, v in group)
    for group in groups
]""",
}

_COMBINE_EXAMPLE = """\
print(len(prompts), max(map(len, prompts)))
replies = llm_query_batched(prompts)
ids = sorted({line.strip() for r in replies for line in r.splitlines()} - {"", "NONE"})
result = "\\n".join(ids)
print(len(ids), ids[:10])"""


def _examples(info: ContextInfo, sizing: Sizing) -> str:
    average = info.text_chars / max(1, info.items or 1)
    per = max(1, _round_down(sizing.target_chars / max(1.0, average)))
    chunk = _fill(
        _CHUNK_EXAMPLE[info.type], {"chunk_chars": f"{sizing.target_chars:_}", "per": f"{per:_}"}
    )
    return (
        "Regex first, for what a pattern can find:\n"
        f"```repl\n{_REGEX_EXAMPLE[info.type]}\n```\n"
        "Chunk, batch and combine, for what needs reading (the sub-prompt gives the "
        "instruction, the question, the text and a terse format to parse):\n"
        f"```repl\n{chunk}\n{_COMBINE_EXAMPLE}\n```\n"
        "Then, once the printed counts look right:\nFINAL_VAR(result)"
    )


# --------------------------------------------------------------------------- rendering


_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


def _fill(template: str, values: dict[str, str]) -> str:
    pattern = re.compile(r"\{(" + "|".join(map(re.escape, values)) + r")\}")
    return pattern.sub(lambda m: values[m.group(1)], template)


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
        ),
        "run_limits": _limits(limits, spent),
        "subcall_sizing": _sizing(sizing, sub_model),
        "examples": _examples(info, sizing),
        "depth_note": depth_note,
        "max_steps": str(limits.max_steps),
        "max_output_chars": f"{limits.max_output_chars:,}",
        "chunk_chars": f"{sizing.target_chars:,}",
        "sub_model": sub_model,
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template or SYSTEM_PROMPT)


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
    calls = f"{spent.subcalls:,} sub-calls"
    if limits.max_subcalls is not None:
        calls += f" ({max(0, limits.max_subcalls - spent.subcalls):,} left)"
    parts.append(calls)
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
        fence = _fence(body)
        parts.append(f"{header}\n{fence}\n{body}\n{fence}")
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
        "FINAL_VAR(name) or FINAL(answer) on a line of its own."
    )
    return "\n\n".join(parts)


def last_call(question: str, *, reason: str = "max_steps") -> str:
    """The turn that asks for the answer when steps, money or time have run out."""
    stopped = _STOPPED.get(reason, _STOPPED["max_steps"])
    return LAST_CALL_MESSAGE.format(stopped=stopped, question=short_question(question))
