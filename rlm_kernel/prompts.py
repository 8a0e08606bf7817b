"""The words the root model reads: the system prompt and the per-step messages (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .context import ContextInfo

SYSTEM_PROMPT = """\
You answer a question about a context that is far too large to read at once. The context is \
loaded in a persistent Python REPL (a Jupyter kernel) as the variable `context`. You never see it \
whole: you look at it, filter it and hand pieces of it to sub-models by writing code.

## The context
{context_description}

## Running code
Write Python in fenced blocks tagged `repl`:

```repl
print(type(context), len(context))
print(context[:1000])
```

The blocks of a reply run in order in the same kernel; variables persist across blocks and \
steps. After each reply you are shown what every block printed, cut to {max_output_chars:,} \
characters (head and tail) - so print sizes, samples and summaries, never whole chunks.

## Functions in the REPL
- `llm_query(prompt, model=None) -> str`: one call to a sub-model. It sees only the prompt you \
pass (it can take a few hundred thousand characters), so put the text it must read into the \
prompt.
- `llm_query_batched(prompts, model=None) -> list[str]`: many sub-calls run concurrently, \
answers in order. Far faster than calling `llm_query` in a loop: use it whenever the calls are \
independent.
- `rlm_query(prompt, context=None) -> str`: a sub-call for a sub-problem (currently answered by \
the sub-model, like `llm_query`).
- `SHOW_VARS()`: your variables with their types and sizes.
- `FINAL(answer)`: finish with this answer. `FINAL_VAR("name")`: finish with the value of a \
variable. Setting `answer["content"] = ...` then `answer["ready"] = True` also finishes.
A sub-call that fails raises `SubcallError`; exhausting the budget raises `BudgetExceeded`. \
Both are ordinary exceptions: catch them or change plan.

## How to work
1. Look before you read: the type, length and structure of `context`, and a few samples.
2. Filter with code first (slicing, `re`, string methods, counting); it is exact, fast and free.
3. For what needs understanding, split the relevant part into chunks and send them with \
`llm_query_batched`; keep the answers in variables and combine them with code.
4. Check your result against the context before you answer.
5. Finish with `FINAL(...)` on a line of its own outside code (or a call in code) once you are \
sure. Do not finish in the same reply as code whose output you have not seen yet, unless the \
code itself calls FINAL.
You have at most {max_steps} replies.
"""

FIRST_MESSAGE = """\
Question: {question}

Start by exploring `context` with code. Reply with ```repl blocks; finish with FINAL(...) when \
you know the answer."""

NO_CODE_MESSAGE = """\
Your reply had no ```repl block and no FINAL(...) line, so nothing ran. Write code to continue, \
or finish with FINAL(answer) on a line of its own."""

LAST_CALL_MESSAGE = """\
You have used all your steps. Reply now with your best answer to the question, on a line of its \
own as FINAL(answer), based on what you found. Do not write code: it will not run.

Question: {question}"""


@dataclass(frozen=True)
class BlockReport:
    """What the model is shown about one block it wrote."""

    status: str
    shown: str
    output_chars: int


def describe_context(info: ContextInfo) -> str:
    """A few lines telling the model the type, size and shape of ``context``."""
    lines = [f"`context` is a {info.type} of {info.chars:,} characters."]
    if info.items is not None:
        noun = "elements" if info.type == "list" else "keys"
        lines.append(f"It has {info.items:,} {noun}.")
        if info.lengths:
            shown = ", ".join(f"{n:,}" for n in info.lengths[:20])
            more = " ..." if info.items > len(info.lengths[:20]) else ""
            lines.append(f"Sizes of the first values (chars): {shown}{more}.")
    return " ".join(lines)


def system_prompt(info: ContextInfo, *, max_steps: int, max_output_chars: int) -> str:
    """The system prompt for one run."""
    return SYSTEM_PROMPT.format(
        context_description=describe_context(info),
        max_output_chars=max_output_chars,
        max_steps=max_steps,
    )


def first_message(question: str) -> str:
    return FIRST_MESSAGE.format(question=question)


FINAL_REJECTED_NOTE = """\
Your FINAL(...) was not accepted: a block of the same reply did not run cleanly, so the answer \
was written without seeing its result. Look at the output above, then answer again."""

CUT_OFF_NOTE = """\
Your reply was cut off at the output-token limit (an unfinished code block does not run). \
Write shorter replies: keep long text in variables, not in your messages."""


def feedback(
    reports: Sequence[BlockReport],
    *,
    step: int,
    max_steps: int,
    final_rejected: bool = False,
    cut_off: bool = False,
) -> str:
    """The user turn that follows a reply: each block's status and (truncated) output."""
    notes = [CUT_OFF_NOTE] if cut_off else []
    if not reports:
        return "\n\n".join([*notes, NO_CODE_MESSAGE])
    parts = []
    for n, r in enumerate(reports, start=1):
        header = f"Block {n} ({r.status}, {r.output_chars:,} characters of output):"
        body = r.shown if r.shown.strip() else "(no output)"
        parts.append(f"{header}\n```\n{body}\n```")
    if final_rejected:
        parts.append(FINAL_REJECTED_NOTE)
    parts.extend(notes)
    left = max_steps - step
    parts.append(
        f"{left} repl step{'s' if left != 1 else ''} left. Continue, or finish with FINAL(...)."
    )
    return "\n\n".join(parts)


def last_call(question: str) -> str:
    return LAST_CALL_MESSAGE.format(question=question)
