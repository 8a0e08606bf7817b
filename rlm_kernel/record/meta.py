"""What a new run's ``metadata.rlm`` starts as, and how its values become plain JSON types.

The defaults name every key of the run record (see :class:`~.records.RunRecord`) with the value a
run has before its first step; the versions of the packages that shape a run are read once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import importlib.metadata
import platform
import uuid
from collections.abc import Mapping
from typing import Any

from ..types import Usage
from . import format as fmt

_VERSIONED = (
    ("rlm_kernel", "rlm-kernel"),
    ("ipykernel", "ipykernel"),
    ("jupyter_client", "jupyter_client"),
    ("nbformat", "nbformat"),
    ("anthropic", "anthropic"),
    ("openai", "openai"),
)


def now() -> str:
    """The current UTC time, ISO 8601 to the millisecond, as a run records it."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def duration(started: Any, finished: str) -> float | None:
    """Seconds from ``started`` to ``finished`` (ISO 8601); ``None`` if ``started`` is no time."""
    try:
        start = dt.datetime.fromisoformat(str(started))
    except ValueError:
        return None
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.timezone.utc)
    return round((dt.datetime.fromisoformat(finished) - start).total_seconds(), 3)


@functools.cache
def versions() -> dict[str, str]:
    """The versions of Python and of the installed packages that shape a run, read once."""
    found = {"python": platform.python_version()}
    for key, dist in _VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[key] = importlib.metadata.version(dist)
    return found


def default_meta() -> dict[str, Any]:
    """A new ``metadata.rlm`` with every key at its value before the first step."""
    return {
        "format": fmt.FORMAT,
        "run_id": uuid.uuid4().hex,
        "status": "running",
        "stop_reason": None,
        "question": "",
        "answer": None,
        "models": {"root": None, "sub": None},
        "limits": {},
        "system_prompt": None,
        "context": {
            "type": None,
            "chars": None,
            "bytes": None,
            "sha256": None,
            "path": None,
            "preview": None,
        },
        "usage": {"root": Usage().to_dict(), "sub": Usage().to_dict()},
        "cost_usd": 0.0,
        "steps": 0,
        "subcalls": 0,
        "started": now(),
        "finished": None,
        "duration_s": None,
        "versions": dict(versions()),
        "parent": None,
        "error": None,
        "depth": 1,
        "children": [],
    }


def fill_defaults(target: dict[str, Any], defaults: Mapping[str, Any]) -> None:
    """Add the keys of ``defaults`` missing from ``target``, nested dicts too, in place."""
    for key, value in defaults.items():
        if key not in target:
            target[key] = value
        elif isinstance(value, dict) and isinstance(target[key], dict):
            fill_defaults(target[key], value)


def to_plain(value: Any) -> None:
    """Turn dataclasses (Usage, Limits, SubcallRecord, ...) and tuples into JSON types, in place."""
    items: Any
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, item in list(items):
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            to_dict = getattr(item, "to_dict", None)
            value[key] = item = to_dict() if callable(to_dict) else dataclasses.asdict(item)
        elif isinstance(item, tuple):
            value[key] = item = list(item)
        to_plain(item)
