"""What every task shares: the instance record and the token estimate."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

CHARS_PER_TOKEN = 4  # sizes are tokens at this many characters each (English prose, roughly)

Scorer = Literal["exact", "numeric", "pairs"]


@dataclass(frozen=True)
class Instance:
    """One question over one context, with its gold answer.

    Attributes:
        id: unique within a benchmark, e.g. ``sniah-8K-s0-1``; names its result and notebook.
        task: the task's name.
        size_tokens: the size asked for (the context is within a few percent of it).
        context: the input: a ``str``, a ``list`` of documents or a ``dict`` of files.
        question: what is asked, answer format included.
        gold: the answer: a string, a number (``numeric``) or a list of pairs (``pairs``).
        scorer: how an answer is scored (see :mod:`rlm_kernel.bench.scorers`).
        metadata: how the instance was built (kind of question, where the facts are, ...).
    """

    id: str
    task: str
    size_tokens: int
    context: str | list[Any] | dict[str, Any]
    question: str
    gold: Any
    scorer: Scorer
    metadata: dict[str, Any] = field(default_factory=dict)

    def with_id(self, new_id: str) -> Instance:
        """A copy named ``new_id``."""
        return dataclasses.replace(self, id=new_id)

    def describe(self) -> dict[str, Any]:
        """Everything but the context, for results files."""
        return {
            "id": self.id,
            "task": self.task,
            "size_tokens": self.size_tokens,
            "question": self.question,
            "gold": self.gold,
            "scorer": self.scorer,
            "metadata": self.metadata,
        }
