"""How much the overhead suite measures: the default, ``--quick`` and ``--full`` plans."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

PARTS = ("steps", "subcalls", "batched", "context", "memory", "growth", "startup", "children")
"""The suite's parts, in the order they run (``--only`` picks some)."""


@dataclass(frozen=True)
class Plan:
    """The sizes of every measurement; the same plan drives both implementations.

    Attributes:
        steps: the length of the runs whose step times give the per-step overhead.
        reps: repetitions of the per-step runs and of the start-up.
        subcalls: sequential ``llm_query`` calls per timed loop (three loops).
        batched: ``(sub-model latency in seconds, concurrency cap)`` pairs.
        per_slot: prompts per slot of the cap in a batch (``per_slot × cap`` prompts).
        sizes_mb: context sizes to load, in MiB.
        memory_mb: the context size of the kernel memory figure.
        growth_steps: the length of the run whose notebook writes are compared.
        window: steps at each end of that run compared with each other.
        children: child runs started together (against one child).
        child_latency: seconds each child's model waits per reply.
        parts: the parts to run.
    """

    steps: int = 50
    reps: int = 2
    subcalls: int = 300
    batched: tuple[tuple[float, int], ...] = ((0.05, 4), (0.05, 16), (0.2, 4), (0.2, 16))
    per_slot: int = 4
    sizes_mb: tuple[int, ...] = (1, 10, 100, 300)
    memory_mb: int = 100
    growth_steps: int = 500
    window: int = 50
    children: int = 4
    child_latency: float = 0.25
    parts: tuple[str, ...] = field(default=PARTS)

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON data (handed to the reference's driver)."""
        return asdict(self)


DEFAULT = Plan()
FULL = replace(DEFAULT, sizes_mb=(1, 10, 100, 300, 1024))
QUICK = Plan(
    steps=6,
    reps=1,
    subcalls=20,
    batched=((0.01, 4),),
    per_slot=2,
    sizes_mb=(1, 4),
    memory_mb=4,
    growth_steps=24,
    window=5,
    children=2,
    child_latency=0.05,
)
