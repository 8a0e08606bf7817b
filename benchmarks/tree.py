"""Run trees: eight child runs started by one ``rlm_query_batched`` against a single child.

Every child run is the same: its scripted model waits a fixed latency (0.5 s by default) before
each of its two replies (one code block, then ``FINAL_VAR``), so a child takes about twice the
latency plus what rlm-kernel adds (a kernel from the pool, the bridge, two cells, the notebook).
The root, also scripted, either calls ``rlm_query`` once or ``rlm_query_batched`` with eight
prompts, then answers. The figure is the duration of the root's cell that makes the call, read
from the root notebook (``exec.duration_s``): what a user waits for. Its floor is the same cell
with a single child, measured in the same process and interleaved with it, and the target is
8 children ≤ 1.5 × one child. The ideal, the model time alone (two latencies), is printed
beside them; the JSON also has each whole run's time, kernel start-ups included.

Each pool size given with ``--warm`` (``RLM(warm_kernels=N)``) is measured separately. Prints a
table, then one JSON object (also written to ``--json-out FILE``). Exit status 0 whatever the
outcome: the ``ok`` column says which targets were met.

Usage::

    python benchmarks/tree.py [--children 8] [--latency 0.5] [--warm 2 --warm 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlm_kernel import RLM
from rlm_kernel.record import read
from rlm_kernel.types import Completion, Usage

TARGET = 1.5


@dataclass
class Figure:
    """One row: a batch of children against one child, with the pool size used."""

    warm: int
    children: int
    batch_s: float
    one_s: float
    model_s: float
    ok: bool
    ratio: float = field(init=False)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ratio = self.batch_s / self.one_s


class TreeModel:
    """The root and child model in one: replies by the question it is asked, after a latency.

    Args:
        children: how many children the root starts (1: ``rlm_query``; more: batched).
        latency_s: seconds each child reply waits (and each root reply, by ``root_latency_s``).
        root_latency_s: seconds each root reply waits.
    """

    name = "scripted:tree-bench"

    def __init__(self, children: int, latency_s: float, root_latency_s: float) -> None:
        self.children = children
        self.latency_s = latency_s
        self.root_latency_s = root_latency_s

    async def complete(self, messages: list[dict[str, Any]], *, max_tokens: int) -> Completion:
        question = str(messages[1]["content"])
        replies = sum(m["role"] == "assistant" for m in messages)
        child = "bench child" in question
        await asyncio.sleep(self.latency_s if child else self.root_latency_s)
        if child:
            text = "```repl\nn = len(context)\n```" if replies == 0 else "FINAL_VAR(n)"
        elif replies == 0:
            text = self._call()
        else:
            text = "FINAL_VAR(answers)"
        usage = Usage(calls=1, input_tokens=100, output_tokens=10)
        return Completion(text=text, model=self.name, usage=usage, cost_usd=0.0)

    def _call(self) -> str:
        if self.children == 1:
            return "```repl\nanswers = [rlm_query('bench child 0')]\n```"
        prompts = [f"bench child {i}" for i in range(self.children)]
        return f"```repl\nanswers = rlm_query_batched({prompts!r})\n```"


async def sub_model(messages: list[dict[str, Any]]) -> str:
    return "unused"


async def tree_cell_s(
    work: Path, name: str, *, children: int, warm: int, latency_s: float, root_latency_s: float
) -> tuple[float, float]:
    """Run one tree; return how long the root's cell that started the children took, and the
    whole run (``arun`` from call to return, kernel start-ups included)."""
    model = TreeModel(children, latency_s, root_latency_s)
    rlm = RLM(model, sub_model, max_depth=2, warm_kernels=warm, display=False)
    notebook = work / f"{name}.ipynb"
    started = time.perf_counter()
    result = await rlm.arun("bench root", "a context of some characters", notebook=notebook)
    run_s = time.perf_counter() - started
    if result.status != "answered":
        raise RuntimeError(f"{name}: the tree ended {result.status}: {result.error}")
    ended = [c["status"] for c in result.children]
    if ended != ["answered"] * children:
        raise RuntimeError(f"{name}: the children ended {ended}")
    (cell,) = [c for c in read(notebook).code_cells if "rlm_query" in c.source]
    return float(cell.exec.duration_s), run_s


async def measure(
    work: Path,
    log: Callable[[str], None],
    *,
    children: int,
    warm: int,
    latency_s: float,
    root_latency_s: float,
    repeat: int,
) -> Figure:
    # Interleaved, one child then the batch, `repeat` times; medians.
    ones, batches, one_runs, batch_runs = [], [], [], []
    common = {"warm": warm, "latency_s": latency_s, "root_latency_s": root_latency_s}
    for i in range(repeat):
        cell, run = await tree_cell_s(work, f"one-w{warm}-{i}", children=1, **common)
        ones.append(cell)
        one_runs.append(run)
        cell, run = await tree_cell_s(work, f"batch-w{warm}-{i}", children=children, **common)
        batches.append(cell)
        batch_runs.append(run)
        log(f"warm {warm}, round {i + 1}: 1 child {ones[-1]:.3f} s, {children}: {batches[-1]:.3f}s")
    one, batch = statistics.median(ones), statistics.median(batches)
    return Figure(
        warm=warm,
        children=children,
        batch_s=batch,
        one_s=one,
        model_s=2 * latency_s,
        ok=batch <= TARGET * one,
        extra={
            "one_reps_s": ones,
            "batch_reps_s": batches,
            "one_run_reps_s": [round(r, 3) for r in one_runs],
            "batch_run_reps_s": [round(r, 3) for r in batch_runs],
            "root_latency_s": root_latency_s,
        },
    )


def table(figures: list[Figure]) -> str:
    rows = [("pool", "children", "batch", "one child (floor)", "model time", "ratio", "ok")]
    for f in figures:
        rows.append(
            (
                f"warm_kernels={f.warm}",
                str(f.children),
                f"{f.batch_s:.3f} s",
                f"{f.one_s:.3f} s",
                f"{f.model_s:.3f} s",
                f"{f.ratio:.2f} (≤ {TARGET})",
                "yes" if f.ok else "NO",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


async def main_async(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rlmb-tree-"))
    started = time.perf_counter()
    figures = []
    root_latency = args.latency if args.root_latency is None else args.root_latency
    try:
        for warm in args.warm or [2, args.children]:
            figures.append(
                await measure(
                    work,
                    log,
                    children=args.children,
                    warm=warm,
                    latency_s=args.latency,
                    root_latency_s=root_latency,
                    repeat=args.repeat,
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "figures": [asdict(f) for f in figures],
        "target": f"{args.children} children ≤ {TARGET} × one child",
        "duration_s": round(time.perf_counter() - started, 2),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)),
        },
        "_figures": figures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=8, help="children of the batch")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per child reply")
    parser.add_argument(
        "--root-latency", type=float, help="seconds per root reply (default: --latency)"
    )
    parser.add_argument(
        "--warm", type=int, action="append", help="pool sizes to measure (default: 2 and 8)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds per pool size")
    parser.add_argument("--json-out", type=Path, help="also write the JSON object to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--cpu",
        type=int,
        action="append",
        help="run on these CPUs only (repeatable); kernels inherit it. Default: all CPUs",
    )
    args = parser.parse_args(argv)
    if args.cpu:
        os.sched_setaffinity(0, set(args.cpu))

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    report = asyncio.run(main_async(args, log))
    figures = report.pop("_figures")
    print(table(figures))
    text = json.dumps(report, indent=1, ensure_ascii=False)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
