"""The benchmark tasks: seeded, offline generators of instances with verified gold answers.

A task is a module with ``generate(rng, size_tokens, index) -> Instance``; :data:`TASKS` maps
its command-line name to it. Sizes are in tokens, estimated as :data:`CHARS_PER_TOKEN`
characters per token (the estimate the package's prompts and fake model server use too), so a
16,000-token instance has about 64,000 characters of context.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import UsageError
from . import codeqa, multihop, oolong, oolong_pairs, sniah
from ._common import CHARS_PER_TOKEN, Instance

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_SIZES",
    "TASKS",
    "Instance",
    "Task",
    "context_text",
    "generate",
    "parse_size",
]


@dataclass(frozen=True)
class Task:
    """One task: its generator and the context sizes it runs at by default.

    Attributes:
        name: the command-line name, e.g. ``oolong-pairs``.
        make: ``(rng, size_tokens, index) -> Instance``.
        sizes: default context sizes in tokens.
        about: one line for ``--help``.
    """

    name: str
    make: Callable[[random.Random, int, int], Instance]
    sizes: tuple[int, ...]
    about: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("sniah", sniah.generate, (8_000, 32_000, 128_000), sniah.ABOUT),
        Task("oolong", oolong.generate, (8_000, 32_000, 128_000), oolong.ABOUT),
        Task("oolong-pairs", oolong_pairs.generate, (8_000, 32_000), oolong_pairs.ABOUT),
        Task("multihop", multihop.generate, (16_000, 64_000, 256_000), multihop.ABOUT),
        Task("codeqa", codeqa.generate, (16_000, 64_000, 256_000), codeqa.ABOUT),
    )
}
DEFAULT_SIZES = {name: t.sizes for name, t in TASKS.items()}
_SUFFIXES = {"k": 1_000, "m": 1_000_000}


def parse_size(text: str) -> int:
    """A size in tokens from ``8000``, ``8K``, ``1.5M``.

    Raises:
        UsageError: not a positive size.
    """
    s = text.strip().lower().replace("_", "").replace(",", "")
    scale = _SUFFIXES.get(s[-1:], 1)
    number = s[:-1] if scale > 1 else s
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise UsageError(
            f"size {text!r} is not a number of tokens such as 8000, 32K or 1M"
        ) from None
    if value < 1_000:
        raise UsageError(f"size {text!r} is too small: sizes start at 1K tokens")
    return value


def generate(task: str, *, n: int, seed: int, size_tokens: int) -> list[Instance]:
    """``n`` instances of ``task`` at ``size_tokens``; the same arguments give the same instances.

    Raises:
        UsageError: an unknown task.
    """
    try:
        spec = TASKS[task]
    except KeyError:
        raise UsageError(f"unknown task {task!r}; tasks are: {', '.join(TASKS)}") from None
    out = []
    for index in range(n):
        # One generator per instance: instance i is the same whatever n is.
        rng = random.Random(f"{task}/{seed}/{size_tokens}/{index}")
        inst = spec.make(rng, size_tokens, index)
        out.append(inst.with_id(f"{task}-{_short(size_tokens)}-s{seed}-{index}"))
    return out


def _short(tokens: int) -> str:
    if tokens % 1_000_000 == 0:
        return f"{tokens // 1_000_000}M"
    if tokens % 1_000 == 0:
        return f"{tokens // 1_000}K"
    return str(tokens)


def context_text(context: str | list | dict) -> str:
    """The context as one text, for the baselines that read it as a prompt."""
    if isinstance(context, str):
        return context
    if isinstance(context, dict):
        return "\n\n".join(f"=== {k} ===\n{_as_text(v)}" for k, v in context.items())
    return "\n\n".join(f"=== item {i} ===\n{_as_text(v)}" for i, v in enumerate(context))


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
