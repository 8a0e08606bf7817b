"""The results of a benchmark: a table per method and size, as Markdown, JSON and plots.

Each row aggregates the runs of one method at one context size: the mean score; cost as mean,
median and 95th percentile (RLM costs have long tails, so the mean alone misleads); tokens and
wall time per run; how many runs failed and how many model calls the cache answered.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Report", "Row", "build", "percentile", "write"]

MARKDOWN, JSON = "results.md", "results.json"
SCORE_PLOT, COST_PLOT = "score_vs_size.png", "cost_distribution.png"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of ``values`` by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class Row:
    """One method at one size."""

    method: str
    size_tokens: int
    runs: int
    score: float
    cost_mean: float | None
    cost_median: float | None
    cost_p95: float | None
    tokens_mean: float
    time_mean_s: float
    errors: int
    cached_calls: int
    calls: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return dict(self.__dict__)


@dataclass
class Report:
    """The rows, the raw results they come from, and the settings of the benchmark."""

    rows: list[Row]
    records: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    @property
    def cost_usd(self) -> float:
        """Dollars of the priced calls of every run in the report."""
        return sum(r.get("cost_usd") or 0.0 for r in self.records)

    def markdown(self) -> str:
        """The table, with a line on the settings above it."""
        c = self.config
        head = (
            f"**{c.get('task', '?')}** · root `{c.get('model', '?')}` · sub "
            f"`{c.get('sub_model', '?')}` · n={c.get('n', '?')} per size · "
            f"seed {c.get('seed', '?')}"
        )
        lines = [
            head,
            "",
            "| method | size (tokens) | runs | score | cost mean | cost median | cost p95 "
            "| tokens/run | time/run | errors | cached calls |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.method} | {r.size_tokens:,} | {r.runs} | {r.score:.3f} | "
                f"{_money(r.cost_mean)} | {_money(r.cost_median)} | {_money(r.cost_p95)} | "
                f"{r.tokens_mean:,.0f} | {r.time_mean_s:.1f} s | {r.errors} | "
                f"{r.cached_calls}/{r.calls} |"
            )
        lines += ["", "Cost: dollars of priced calls; — where no call had a known price."]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` form."""
        return {
            "config": self.config,
            "rows": [r.to_dict() for r in self.rows],
            "results": self.records,
        }


def _tokens(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}K" if n >= 1_000 else str(n)


def _money(x: float | None) -> str:
    return "—" if x is None else f"${x:.4f}"


def build(records: Sequence[dict[str, Any]], *, config: dict[str, Any] | None = None) -> Report:
    """Aggregate result records (one per run) into rows, ordered by method then size."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["method"], int(r["size_tokens"]))].append(r)
    order = {m: i for i, m in enumerate((config or {}).get("methods", []))}
    rows = []
    for (method, size), runs in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][0], kv[0][1])
    ):
        costs = [r["cost_usd"] for r in runs if r.get("cost_usd") is not None]
        rows.append(
            Row(
                method=method,
                size_tokens=size,
                runs=len(runs),
                score=statistics.fmean(float(r["score"]) for r in runs),
                cost_mean=statistics.fmean(costs) if costs else None,
                cost_median=statistics.median(costs) if costs else None,
                cost_p95=percentile(costs, 95) if costs else None,
                tokens_mean=statistics.fmean(
                    r.get("input_tokens", 0) + r.get("output_tokens", 0) for r in runs
                ),
                time_mean_s=statistics.fmean(float(r.get("duration_s") or 0.0) for r in runs),
                errors=sum(1 for r in runs if r.get("status") not in ("answered", "no_answer")),
                cached_calls=sum(int(r.get("cached_calls") or 0) for r in runs),
                calls=sum(int(r.get("calls") or 0) for r in runs),
            )
        )
    return Report(rows=rows, records=list(records), config=dict(config or {}))


def write(report: Report, out: Path) -> list[Path]:
    """Write ``results.md``, ``results.json`` and the plots into ``out``; returns the files.

    The plots need matplotlib (the ``bench`` extra); without it they are skipped with a warning.
    """
    out = Path(out)
    files = [_atomic(out / MARKDOWN, report.markdown())]
    files.append(_atomic(out / JSON, json.dumps(report.to_dict(), ensure_ascii=False, indent=1)))
    try:
        files += plot(report, out)
    except ImportError:
        warnings.warn(
            "no plots: they need matplotlib (pip install 'rlm-kernel[bench]')", stacklevel=2
        )
    report.files = files
    return files


def _atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def plot(report: Report, out: Path) -> list[Path]:
    """Score against context size per method, and the cost distribution per method (PNG).

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    task = report.config.get("task", "")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r.method for r in report.rows):
        rows = [r for r in report.rows if r.method == method]
        ax.plot([r.size_tokens for r in rows], [r.score for r in rows], marker="o", label=method)
    ax.set_xscale("log")
    sizes = sorted({r.size_tokens for r in report.rows})
    ax.set_xticks(sizes, [_tokens(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("context size (tokens)")
    ax.set_ylabel("mean score")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"{task}: score against context size")
    ax.grid(True, alpha=0.3)
    ax.legend()
    score_path = out / SCORE_PLOT
    fig.tight_layout()
    fig.savefig(score_path, dpi=110)
    plt.close(fig)

    by_method: dict[str, list[float]] = defaultdict(list)
    for r in report.records:
        if r.get("cost_usd") is not None:
            by_method[r["method"]].append(float(r["cost_usd"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if by_method:
        names = list(by_method)
        ax.boxplot([by_method[m] for m in names], showfliers=True)
        ax.set_xticks(range(1, len(names) + 1), names)
        ax.set_ylabel("cost per run (USD)")
    else:
        ax.text(0.5, 0.5, "no priced calls", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"{task}: cost per run")
    ax.grid(True, axis="y", alpha=0.3)
    cost_path = out / COST_PLOT
    fig.tight_layout()
    fig.savefig(cost_path, dpi=110)
    plt.close(fig)
    return [score_path, cost_path]
