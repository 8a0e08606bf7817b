"""Where provider-side prompt caching pays: hints from the run to the providers that bill it.

Anthropic bills a prompt written to its cache at 1.25 times the input price and a prompt read
from it at 0.1 times, so a mark pays only on what a later request re-reads: the root model's
system prompt and conversation (each turn repeats the previous ones), and a long prefix that the
prompts of one ``llm_query_batched`` share. A one-off sub-call prompt is never marked.

The root's requests are told apart by their shape (a system prompt, or earlier turns). A batch's
shared prefix travels as :data:`SHARED_PREFIX`, a context variable the sub-call service sets
around each call of a batch worth it (:func:`worth_marking`): it reaches the provider without
changing the messages, so other providers, plain-function models and the model-call cache's keys
never see it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar

__all__ = [
    "CHARS_PER_TOKEN",
    "READ_PRICE",
    "SHARED_PREFIX",
    "WRITE_PRICE",
    "shared_prefix",
    "worth_marking",
]

SHARED_PREFIX: ContextVar[int] = ContextVar("rlm_kernel_shared_prefix", default=0)
"""Characters at the start of this sub-call's prompt that other prompts of its batch share."""

CHARS_PER_TOKEN = 4  # a rough estimate for English text and code; providers count exactly
WRITE_PRICE = 1.25  # of the input price, for input written to the cache
READ_PRICE = 0.1  # of the input price, for input read from it


def shared_prefix(prompts: Sequence[str]) -> int:
    """Characters that every prompt starts with, cut back to the end of a line or word.

    Returns 0 for fewer than two prompts. The cut keeps a block boundary where a reader would
    put one, so splitting a prompt there changes nothing of its meaning.
    """
    if len(prompts) < 2:
        return 0
    # The prefix all prompts share is the one the smallest and largest share.
    first, last = min(prompts), max(prompts)
    low, high = 0, len(first)
    while low < high:  # a binary search over slices: string comparison runs in C
        mid = (low + high + 1) // 2
        if first[:mid] == last[:mid]:
            low = mid
        else:
            high = mid - 1
    common = first[:low]
    cut = max(common.rfind("\n"), common.rfind(" "))
    return cut + 1 if cut >= 0 else 0


def worth_marking(batch: int, concurrency: int) -> bool:
    """Whether marking a shared prefix costs less than not marking it.

    The first ``concurrency`` requests of a batch go out together, before any of them has
    written the cache, so each pays the write price; the rest read it. Marking pays when
    ``WRITE_PRICE·w + READ_PRICE·(batch − w) < batch`` with ``w = min(batch, concurrency)``.
    """
    writes = min(batch, max(1, concurrency))
    return WRITE_PRICE * writes + READ_PRICE * (batch - writes) < batch
