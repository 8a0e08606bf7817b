"""Model prices and the cost of a call, from the data file ``prices.json`` beside this module.

Prices are USD per million tokens for input, output, cache writes (5-minute cache) and cache
reads, keyed by provider and model id; the file carries the date they were taken from the
providers' price pages. A model that is not in the file has no price: :func:`cost` returns
``None`` and never guesses.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from importlib import resources
from typing import Any

from ..types import Usage

# Dated snapshots share the price of their alias: claude-sonnet-4-5-20250929, gpt-4o-2024-08-06.
_DATE_SUFFIX = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2})$")
_PER = 1_000_000


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("prices.json").read_text(encoding="utf-8")
    return json.loads(text)


def _lookup(provider: str, model: str) -> dict[str, Any] | None:
    models = _table()["providers"].get(provider) or {}
    entry = models.get(model)
    if entry is None:
        undated = _DATE_SUFFIX.sub("", model)
        if undated != model:
            entry = models.get(undated)
    return entry


def price(provider: str, model: str) -> dict[str, Any] | None:
    """The prices of ``provider``'s ``model`` (USD per million tokens), or ``None`` if unknown.

    The keys are ``input``, ``output``, ``cache_read`` and usually ``cache_write``; a model
    priced higher above a prompt size has a ``long_context`` entry with a ``threshold`` (input
    tokens, cache reads and writes included) and the prices above it. A model id with a date
    suffix (``-YYYYMMDD`` or ``-YYYY-MM-DD``) has the price of the id without it.
    """
    entry = _lookup(provider, model)
    return copy.deepcopy(entry) if entry is not None else None


def cost(provider: str, model: str, usage: Usage) -> float | None:
    """The cost in USD of ``usage`` on ``provider``'s ``model``, or ``None`` if it is unpriced.

    A model without a cache-write price bills cache writes as input. When ``usage`` sums several
    calls, the long-context band is chosen by the mean prompt size per call.
    """
    entry = _lookup(provider, model)
    if entry is None:
        return None
    rates = entry
    band = entry.get("long_context")
    if band is not None:
        prompt = (
            usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
        )
        if prompt / max(usage.calls, 1) > band["threshold"]:
            rates = band
    dollars = (
        usage.input_tokens * rates["input"]
        + usage.output_tokens * rates["output"]
        + usage.cache_creation_input_tokens * rates.get("cache_write", rates["input"])
        + usage.cache_read_input_tokens * rates.get("cache_read", rates["input"])
    )
    return dollars / _PER


def prices_as_of() -> str:
    """The date of the price table, e.g. ``"2026-11"``."""
    return str(_table()["as_of"])


__all__ = ["cost", "price", "prices_as_of"]
