"""The demo: a real question over a generated input, answered with or without an API key.

With ``ANTHROPIC_API_KEY`` set, real models answer. Without it, the package's fake model server
plays a scripted root model (fixed replies: the code below) and a rule-based sub-model (a small
program that reads each prompt), through the real ``anthropic`` SDK over HTTP, so the whole
pipeline runs: kernel, bridge, SDK, notebook. The answer is computed by that code from the data;
nothing in it is fixed in advance.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

from .llm import DEFAULT_ROOT_MODEL, DEFAULT_SUB_MODEL

QUESTION = (
    "How many support tickets report a billing problem (being charged wrongly, twice, or "
    "unexpectedly, or a refund that did not arrive), and which customer filed the most of them?"
)

# With real models the demo spends real money: a cap unless --max-cost says otherwise. Reading the
# 320 KB file through the default sub-model costs a few cents; the cap leaves room for retries.
DEFAULT_COST_CAP_USD = 0.5

SCRIPTED_ROOT_MODEL = "claude-scripted-root"
SCRIPTED_SUB_MODEL = "claude-scripted-sub"

_CUSTOMERS = [
    "Acme Corp", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries", "Wayne Enterprises",
    "Soylent", "Tyrell", "Cyberdyne", "Wonka Industries", "Vandelay Imports",
]  # fmt: skip
_BILLING = [
    "I was charged twice for my subscription this month.",
    "The invoice shows an amount I never agreed to.",
    "My refund from three weeks ago still has not arrived.",
    "You billed my card after I cancelled.",
    "There is an unexpected charge of $49 on my statement.",
]
_OTHER = [
    "The export to CSV button does nothing.",
    "How do I add a second admin to our workspace?",
    "Search is slow when the project has many files.",
    "The mobile app logs me out every day.",
    "Please add dark mode to the dashboard.",
    "Our SSO login fails with an error about the certificate.",
    "Notifications arrive twice on Android.",
]


def generate_tickets(path: Path, n: int = 3000, seed: int = 7) -> Path:
    """Write ``n`` synthetic support tickets (a few hundred KB of text) to ``path``."""
    rng = random.Random(seed)
    weights = [rng.random() ** 2 for _ in _CUSTOMERS]
    tickets = []
    for i in range(1, n + 1):
        customer = rng.choices(_CUSTOMERS, weights)[0]
        billing = rng.random() < 0.12
        body = rng.choice(_BILLING if billing else _OTHER)
        filler = rng.choice(_OTHER)
        priority = rng.choice(["low", "normal", "high"])
        message = f"{filler} {body}" if billing else filler
        tickets.append(
            f"Ticket #{i:05d}\nCustomer: {customer}\nPriority: {priority}\nMessage: {message}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(tickets) + "\n", encoding="utf-8")
    return path


_STEP_1 = """\
I'll look at the shape of the context first.

```repl
print(type(context).__name__, len(context))
print(context[:400])
tickets = context.strip().split("\\n\\n")
print(len(tickets), "tickets")
```
"""

_STEP_2 = """\
The tickets are separated by blank lines. Whether a ticket is about billing needs reading, so I \
will send batches of 100 tickets to the sub-model and ask for the ids of billing tickets.

```repl
import re
from collections import Counter

chunks = ["\\n\\n".join(tickets[i:i + 100]) for i in range(0, len(tickets), 100)]
prompts = [
    "Below are support tickets. List the ticket ids (like #00012) of every ticket that reports a "
    "billing problem: a wrong, double or unexpected charge, or a missing refund. One id per line; "
    "write NONE if there are none.\\n\\n" + chunk
    for chunk in chunks
]
replies = llm_query_batched(prompts)
billing_ids = sorted({m for r in replies for m in re.findall(r"#\\d{5}", r)})
customer_of = dict(re.findall(r"Ticket (#\\d{5})\\nCustomer: ([^\\n]+)", context))
per_customer = Counter(customer_of[t] for t in billing_ids)
print(len(chunks), "chunks,", len(billing_ids), "billing tickets")
print(per_customer.most_common(3))
```
"""

_STEP_3 = """\
The counts are consistent. I'll write the answer from the variables.

```repl
top, top_n = per_customer.most_common(1)[0]
result = (
    f"{len(billing_ids)} tickets report a billing problem; {top} filed the most of them "
    f"({top_n})."
)
print(result)
```

FINAL_VAR(result)
"""

SCRIPTED_ROOT_REPLIES = (_STEP_1, _STEP_2, _STEP_3)

_BILLING_WORDS = re.compile(r"charged|invoice|refund|billed|unexpected charge", re.IGNORECASE)


def rule_sub_model(messages: list[dict]) -> str:
    """The demo's scripted sub-model: lists tickets in the prompt whose message is about billing."""
    prompt = messages[-1]["content"]
    ids = [
        ticket_id
        for ticket_id, body in re.findall(r"Ticket (#\d{5})\n(?:.*\n){2}Message: ([^\n]*)", prompt)
        if _BILLING_WORDS.search(body)
    ]
    return "\n".join(ids) or "NONE"


def uses_real_model() -> bool:
    return bool(os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN"))


def cap_text(max_cost_usd: float | None) -> str:
    """``"at most $0.5"``, or ``"no cost cap"``."""
    return "no cost cap" if max_cost_usd is None else f"at most ${max_cost_usd:g}"


def models() -> tuple[str, str]:
    """The root and sub-model names for the demo run (scripted unless a key is set)."""
    if uses_real_model():
        return DEFAULT_ROOT_MODEL, DEFAULT_SUB_MODEL
    return f"anthropic:{SCRIPTED_ROOT_MODEL}", f"anthropic:{SCRIPTED_SUB_MODEL}"
