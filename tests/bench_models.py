"""Scripted models for the benchmark tests: an oracle that knows the gold answers, or a wrong one.

One rule answers every call of a benchmark, through the real SDK and the fake model server: a
root step of an RLM run (the system prompt is there), a baseline's answering prompt, or a
``summary`` chunk prompt (answered NOTHING RELEVANT). The question in the prompt picks the
instance.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from rlm_kernel.bench.tasks import Instance

SOLVE_SNIAH = """\
I look for the needle with a regular expression.
```repl
import re
found = re.findall(r"magic numbers for {key} is: (\\d+)\\.", context)
print(found)
result = found[0]
```"""


def as_text(instance: Instance, answer: Any) -> str:
    """An answer in the form the question asks for."""
    if instance.scorer == "pairs":
        return ", ".join(f"({a}, {b})" for a, b in answer) or "NONE"
    return str(answer)


def oracle(
    instances: Sequence[Instance],
    answer_of: Callable[[Instance], Any] = lambda i: i.gold,
    *,
    solve_sniah: bool = False,
) -> Callable[[list[dict]], str]:
    """A model answering each instance with ``answer_of(instance)``."""

    def reply(messages: list[dict]) -> str:
        prompt = "\n".join(m["content"] for m in messages if m["role"] == "user")
        if "Write down everything in this part" in prompt:
            return "NOTHING RELEVANT"
        inst = next((i for i in instances if i.question in prompt), None)
        if inst is None:
            raise AssertionError(f"no instance asks this: {prompt[:200]!r}")
        text = as_text(inst, answer_of(inst))
        if messages[0]["role"] != "system":  # a baseline's one prompt
            return text
        if not any(m["role"] == "assistant" for m in messages):
            if solve_sniah and inst.task == "sniah":
                return SOLVE_SNIAH.replace("{key}", re.escape(inst.metadata["key"]))
            return f"```repl\nprint(type(context).__name__, len(context))\nresult = {text!r}\n```"
        return "FINAL_VAR(result)"

    return reply
