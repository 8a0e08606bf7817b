"""The rows of the overhead table: each figure beside its floor, the reference and the target."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

MIB = 1024 * 1024


@dataclass
class Figure:
    """One measured figure, next to the floor measured in the same run.

    Attributes:
        key: a stable identifier for the JSON output.
        name: the row's label in the table.
        ours: rlm-kernel's value.
        floor: the floor measured in the same run (a bare kernel round trip, a socket echo, an
            mmap decode of the same file, ...); what no implementation can beat.
        unit: the unit of ``ours``, ``floor`` and ``rlms``.
        floor_name: what the floor is, in a few words.
        target: the target in words, or ``""`` for a figure given for information.
        ok: whether the target was met; ``None`` for information or when the reference the
            target is relative to was not measured.
        rlms: the reference implementation's value (``--compare rlms``), if measured.
        rlms_in_process: the same with rlms' in-process IPython shell, if measured.
        extra: the raw samples and details, for the JSON.
    """

    key: str
    name: str
    ours: float
    floor: float
    unit: str
    floor_name: str
    target: str = ""
    ok: bool | None = None
    rlms: float | None = None
    rlms_in_process: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vs_floor(self) -> float:
        """``ours / floor``."""
        return self.ours / self.floor if self.floor else math.inf

    @property
    def vs_rlms(self) -> float | None:
        """``ours / rlms`` (the subprocess-kernel mode), or ``None`` when not measured."""
        return self.ours / self.rlms if self.rlms else None

    def to_dict(self) -> dict[str, Any]:
        """The figure as plain JSON data, ratios included."""
        data = asdict(self)
        data["vs_floor"] = _round(self.vs_floor)
        data["vs_rlms"] = _round(self.vs_rlms)
        data["vs_rlms_in_process"] = _round(
            self.ours / self.rlms_in_process if self.rlms_in_process else None
        )
        return data


def _round(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else round(value, 4)


def fmt(value: float | None, unit: str) -> str:
    """``value`` with a precision that suits its unit; ``—`` when absent."""
    if value is None:
        return "—"
    digits = 1 if unit in ("µs", "MiB", "MiB/s") else 3 if unit == "s" else 2
    return f"{value:.{digits}f} {unit}"


def verdict(ok: bool | None) -> str:
    """``PASS``, ``MISS`` or ``info``."""
    return "info" if ok is None else "PASS" if ok else "MISS"


COLUMNS = (
    "figure",
    "ours",
    "floor",
    "×floor",
    "rlms",
    "ours/rlms",
    "rlms in-proc",
    "target",
    "result",
)


def rows(figures: list[Figure]) -> list[tuple[str, ...]]:
    """The table's rows (header first), every figure with its floor."""
    out = [COLUMNS]
    for f in figures:
        ratio = f.vs_rlms
        out.append(
            (
                f.name,
                fmt(f.ours, f.unit),
                f"{fmt(f.floor, f.unit)} ({f.floor_name})",
                f"{f.vs_floor:.2f}",
                fmt(f.rlms, f.unit),
                "—" if ratio is None else f"{ratio:.2f}",
                fmt(f.rlms_in_process, f.unit),
                f.target or "—",
                verdict(f.ok),
            )
        )
    return out


def table(figures: list[Figure]) -> str:
    """A plain-text table, one figure per line."""
    data = rows(figures)
    widths = [max(len(r[i]) for r in data) for i in range(len(COLUMNS))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in data]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
