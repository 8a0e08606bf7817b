"""Model prices and the cost of a call: the official price table, and prices the user gives.

Prices are USD per million tokens for input, output, cache writes (5-minute cache) and cache
reads. Three sources, the first that knows a model wins:

1. prices given in this process with :func:`set_price` (the CLI's ``--price``);
2. the user's prices file, ``$XDG_CONFIG_HOME/rlm-kernel/prices.json`` (by default
   ``~/.config/rlm-kernel/prices.json``), see :func:`user_prices_path`;
3. the official table ``prices.json`` beside this module, dated, keyed by provider and model id,
   which applies only to calls made to the provider's official endpoint. A server of one's own
   that serves a model under an official name (``openai:gpt-4o-mini`` on a local llama.cpp) is
   not billed at the provider's prices.

A model none of them knows has no price: :func:`cost` returns ``None`` and never guesses.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..types import Usage

# Dated snapshots share the price of their alias: claude-sonnet-4-5-20250929, gpt-4o-2024-08-06.
_DATE_SUFFIX = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2})$")
_PER = 1_000_000
_RATE_KEYS = ("input", "output", "cache_read", "cache_write")

_given: dict[str, dict[str, float]] = {}  # by set_price, keyed "provider:model" or "model"
_file_cache: dict[str, Any] = {"key": None, "prices": {}}


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("prices.json").read_text(encoding="utf-8")
    return json.loads(text)


def user_prices_path() -> Path:
    """Where the user's prices file is read from: ``<config dir>/rlm-kernel/prices.json``.

    The config dir is ``$XDG_CONFIG_HOME``, or ``~/.config`` when that is unset. The file maps
    ``"provider:model"`` (or a bare model id, for any provider) to its prices::

        {"openai:llama-3.1-8b": {"input": 0, "output": 0},
         "anthropic:claude-sonnet-5-5": {"input": 1.6, "output": 8, "cache_read": 0.08}}

    ``cache_read`` and ``cache_write`` are optional and default to the input price.
    """
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "rlm-kernel" / "prices.json"


def _rates(where: str, model: str, entry: object) -> dict[str, float]:
    """A validated price entry; raises :class:`UsageError` naming what is wrong."""
    if not isinstance(entry, dict):
        raise UsageError(f"{where}: the price of {model!r} is not an object of rates")
    unknown = set(entry) - set(_RATE_KEYS)
    if unknown:
        raise UsageError(
            f"{where}: unknown price key(s) {', '.join(sorted(unknown))} for {model!r}; "
            f"the keys are {', '.join(_RATE_KEYS)} (USD per million tokens)"
        )
    rates: dict[str, float] = {}
    for key in _RATE_KEYS:
        if key not in entry:
            if key in ("input", "output"):
                raise UsageError(f"{where}: the price of {model!r} needs {key!r}")
            continue
        value = entry[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise UsageError(
                f"{where}: {key} of {model!r} must be a number >= 0 (USD per million tokens), "
                f"not {value!r}"
            )
        rates[key] = float(value)
    return rates


def user_prices() -> dict[str, dict[str, float]]:
    """The prices in the user's prices file (empty when there is none), validated.

    Raises:
        UsageError: the file exists but cannot be read or is not a valid prices file.
    """
    path = user_prices_path()
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read the prices file {path}: {exc.strerror}") from None
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if _file_cache["key"] == key:
        return _file_cache["prices"]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the prices file {path}: {exc}") from None
    except ValueError as exc:
        raise UsageError(f"the prices file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"the prices file {path} must hold an object of model names to prices")
    prices = {str(model): _rates(str(path), str(model), entry) for model, entry in data.items()}
    _file_cache.update(key=key, prices=prices)
    return prices


def set_price(
    model: str,
    input_per_mtok: float,
    output_per_mtok: float,
    *,
    cache_read_per_mtok: float | None = None,
    cache_write_per_mtok: float | None = None,
) -> None:
    """Price ``model`` for this process, ahead of the prices file and the official table.

    Args:
        model: ``"provider:model"`` (e.g. ``"openai:llama-3.1-8b"``) or a bare model id, which
            applies to that id under any provider.
        input_per_mtok: USD per million input tokens.
        output_per_mtok: USD per million output tokens.
        cache_read_per_mtok: USD per million tokens read from the prompt cache (default: input).
        cache_write_per_mtok: USD per million tokens written to the cache (default: input).

    Raises:
        UsageError: a price is negative or not a number, or ``model`` is empty.
    """
    if not model or model.startswith(":") or model.endswith(":"):
        raise UsageError(f"a price needs a model name such as openai:my-model, not {model!r}")
    entry: dict[str, Any] = {"input": input_per_mtok, "output": output_per_mtok}
    if cache_read_per_mtok is not None:
        entry["cache_read"] = cache_read_per_mtok
    if cache_write_per_mtok is not None:
        entry["cache_write"] = cache_write_per_mtok
    _given[model] = _rates("price", model, entry)


def clear_prices() -> None:
    """Forget the prices given with :func:`set_price` (the files are read again when changed)."""
    _given.clear()


def _user_lookup(provider: str, model: str) -> dict[str, Any] | None:
    names = [f"{provider}:{model}", model]
    undated = _DATE_SUFFIX.sub("", model)
    if undated != model:
        names += [f"{provider}:{undated}", undated]
    for source in (_given, user_prices()):
        for name in names:
            if name in source:
                return source[name]
    return None


def _lookup(provider: str, model: str, official: bool) -> dict[str, Any] | None:
    entry = _user_lookup(provider, model)
    if entry is not None or not official:
        return entry
    models = _table()["providers"].get(provider) or {}
    entry = models.get(model)
    if entry is None:
        undated = _DATE_SUFFIX.sub("", model)
        if undated != model:
            entry = models.get(undated)
    return entry


def price(provider: str, model: str, *, official: bool = True) -> dict[str, Any] | None:
    """The prices of ``provider``'s ``model`` (USD per million tokens), or ``None`` if unknown.

    The keys are ``input``, ``output`` and, when known, ``cache_read`` and ``cache_write``; an
    official price higher above a prompt size has a ``long_context`` entry with a ``threshold``
    (input tokens, cache reads and writes included) and the prices above it. A model id with a
    date suffix (``-YYYYMMDD`` or ``-YYYY-MM-DD``) has the price of the id without it.

    Args:
        provider: ``"anthropic"``, ``"openai"``, ...
        model: the model id.
        official: whether the call goes to the provider's official endpoint; when not, only
            prices the user gave apply.
    """
    entry = _lookup(provider, model, official)
    return copy.deepcopy(entry) if entry is not None else None


def cost(provider: str, model: str, usage: Usage, *, official: bool = True) -> float | None:
    """The cost in USD of ``usage`` on ``provider``'s ``model``, or ``None`` if it is unpriced.

    A model without a cache-write (or cache-read) price bills those tokens as input. When
    ``usage`` sums several calls, the long-context band is chosen by the mean prompt size per
    call. ``official`` is as for :func:`price`. Usage with calls whose tokens the server did
    not report has no known cost either.
    """
    entry = _lookup(provider, model, official)
    if entry is None or usage.unknown_calls:
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
    """The date of the official price table, e.g. ``"2026-11"``."""
    return str(_table()["as_of"])


__all__ = [
    "clear_prices",
    "cost",
    "price",
    "prices_as_of",
    "set_price",
    "user_prices",
    "user_prices_path",
]
