"""Scripted end-to-end runs: a context, a question, the root model's replies, a sub-model rule.

The root replies are fixed code (or functions of what the model was shown); the answers are
computed by that code in the kernel, so a test checks the product, not the script.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Reply = str | Callable[[list[dict]], str]


@dataclass
class Scenario:
    name: str
    question: str
    make_context: Callable[[Path], Path]
    root: list[Reply]
    sub: Callable[[list[dict]], str] | None = None
    expected: Callable[[Path], str] | None = None
    cli_args: list[str] = field(default_factory=list)


def last_shown(messages: list[dict]) -> str:
    """The most recent user message: what the model was shown after its last reply."""
    return messages[-1]["content"]


# -- needle with re in 2 MB ------------------------------------------------------------------


def _haystack(path: Path, needle: str, seed: int = 1) -> Path:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "zeta"]
    lines = [" ".join(rng.choices(words, k=12)) for _ in range(32_000)]
    lines.insert(rng.randrange(len(lines)), needle)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


NEEDLE = Scenario(
    name="needle",
    question="What is the magic number hidden in the text?",
    make_context=lambda d: _haystack(d / "haystack.txt", "The magic number is 770421."),
    root=[
        "First the size, then a regex.\n```repl\nimport re\nprint(len(context))\n"
        "hits = re.findall(r'magic number is (\\d+)', context)\nprint(hits)\n```",
        lambda m: "Found it.\nFINAL(" + re.findall(r"\['(\d+)'\]", last_shown(m))[0] + ")",
    ],
    expected=lambda d: "770421",
)

# -- split and find with llm_query_batched ----------------------------------------------------

BATCH_CHUNK = 200_000
_CODE_LINE = re.compile(r"secret code: ([A-Z]{3}-\d{4})")


def _code_finder(messages: list[dict]) -> str:
    found = _CODE_LINE.findall(messages[-1]["content"])
    return found[0] if found else "NONE"


BATCHED = Scenario(
    name="batched",
    question="Find the secret code.",
    make_context=lambda d: _haystack(d / "codes.txt", "Note: the secret code: QXZ-4821.", seed=2),
    root=[
        "```repl\nchunks = [context[i:i + 200000] for i in range(0, len(context), 200000)]\n"
        "prompts = ['Reply with the secret code in this text, or NONE.\\n' + c for c in chunks]\n"
        "answers = llm_query_batched(prompts)\n"
        "hits = [a for a in answers if a != 'NONE']\nprint(len(chunks), hits)\n```",
        "```repl\nFINAL(hits[0])\n```",
    ],
    sub=_code_finder,
    expected=lambda d: "QXZ-4821",
)

# -- count labels with sub-calls, finish with the answer dict ----------------------------------

_MOODS = {"positive": ["loved it", "great value"], "negative": ["broke at once", "waste of money"]}


def _reviews(path: Path) -> Path:
    rng = random.Random(3)
    lines = []
    for i in range(4000):
        mood = rng.choice(["positive", "positive", "negative"])
        lines.append(f"review {i}: {rng.choice(_MOODS[mood])}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _label_reviews(messages: list[dict]) -> str:
    labels = []
    for line in messages[-1]["content"].splitlines():
        if line.startswith("review "):
            text = line.split(": ", 1)[1]
            labels.append("positive" if text in _MOODS["positive"] else "negative")
    return "\n".join(labels)


def _count_labels(path: Path) -> str:
    counts = Counter(
        "positive" if line.split(": ", 1)[1] in _MOODS["positive"] else "negative"
        for line in path.read_text().splitlines()
    )
    return f"positive={counts['positive']} negative={counts['negative']}"


LABELS = Scenario(
    name="labels",
    question="How many reviews are positive and how many negative?",
    make_context=lambda d: _reviews(d / "reviews.txt"),
    root=[
        "```repl\nlines = context.splitlines()\nprint(len(lines), lines[:3])\n```",
        "```repl\nfrom collections import Counter\n"
        "batches = ['\\n'.join(lines[i:i + 500]) for i in range(0, len(lines), 500)]\n"
        "labels = llm_query_batched(['Label each review positive or negative, one per line.\\n'"
        " + b for b in batches])\n"
        "counts = Counter(l for reply in labels for l in reply.splitlines())\n"
        "answer['content'] = f\"positive={counts['positive']} negative={counts['negative']}\"\n"
        "answer['ready'] = True\n```",
    ],
    sub=_label_reviews,
    expected=lambda d: _count_labels(d / "reviews.txt"),
)

# -- a traceback is shown, the model recovers -------------------------------------------------


def _recover(messages: list[dict]) -> str:
    shown = last_shown(messages)
    assert "AttributeError" in shown, shown  # the traceback reached the model
    return (
        "That attribute does not exist; count words instead.\n"
        "```repl\nn = len(context.split())\n```\nFINAL_VAR(n)"
    )


RECOVER = Scenario(
    name="recover",
    question="How many words are in the text?",
    make_context=lambda d: _write(d / "words.txt", "one two three four five\n" * 1000),
    root=["```repl\nprint(context.word_count())\n```", _recover],
    expected=lambda d: "5000",
)

# -- an endless cell is interrupted, variables survive -----------------------------------------

ENDLESS = Scenario(
    name="endless",
    question="What is x + 1?",
    make_context=lambda d: _write(d / "small.txt", "x is 41"),
    root=[
        "```repl\nx = 41\nwhile True:\n    pass\n```",
        "```repl\nprint(x + 1)\ny = x + 1\n```\nFINAL_VAR(y)",
    ],
    expected=lambda d: "42",
    cli_args=["--cell-timeout", "1.5"],
)

# -- 2 MB of output: the model sees at most max_output_chars ------------------------------------

BIG_OUTPUT = Scenario(
    name="big_output",
    question="How long is the context?",
    make_context=lambda d: _write(d / "small.txt", "hello"),
    root=[
        "```repl\nprint('z' * 2_000_000)\nprint('THE END')\n```",
        "```repl\nprint(len(context))\n```\nFINAL(5)",
    ],
    expected=lambda d: "5",
    cli_args=["--max-output-chars", "5000"],
)

# -- no secret reaches the kernel -----------------------------------------------------------

SECRETS = {
    "ANTHROPIC_API_KEY": None,  # the fake server's key, set by the fixture
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value-7f3e",
    "GITHUB_TOKEN": "ghp-secret-value-91ab",
    "MY_SERVICE_PASSWORD": "hunter2-secret-value",
}

ENV_CHECK = Scenario(
    name="secrets",
    question="Which environment variables does the kernel see?",
    make_context=lambda d: _write(d / "small.txt", "nothing here"),
    root=[
        "```repl\nimport os\nnames = sorted(os.environ)\nprint(names)\n"
        "print(dict(os.environ))\nleaked = [n for n in names if 'KEY' in n or 'TOKEN' in n "
        "or 'SECRET' in n or 'PASSWORD' in n]\n```\nFINAL_VAR(leaked)",
    ],
    expected=lambda d: "[]",
)

# -- a JSON list context -----------------------------------------------------------------------


def _records(path: Path) -> Path:
    rows = [{"id": i, "city": ["Oslo", "Lima", "Pune"][i % 3], "amount": i * 3} for i in range(900)]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


JSON_LIST = Scenario(
    name="json_list",
    question="What is the total amount for Lima?",
    make_context=lambda d: _records(d / "rows.json"),
    root=[
        "```repl\nprint(type(context).__name__, len(context), context[0])\n"
        "total = sum(r['amount'] for r in context if r['city'] == 'Lima')\nprint(total)\n```",
        lambda m: "FINAL(" + last_shown(m).split("```\n")[1].splitlines()[1] + ")",
    ],
    expected=lambda d: str(
        sum(r["amount"] for r in json.loads((d / "rows.json").read_text()) if r["city"] == "Lima")
    ),
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


ALL: list[Scenario] = [NEEDLE, BATCHED, LABELS, RECOVER, ENDLESS, BIG_OUTPUT, ENV_CHECK, JSON_LIST]


def by_name(name: str) -> Scenario:
    return next(s for s in ALL if s.name == name)


def scripted(replies: list[Reply]) -> Any:
    from rlm_kernel.testing import ScriptedModel

    return ScriptedModel(list(replies))
