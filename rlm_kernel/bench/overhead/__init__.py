"""``rlm-kernel bench overhead``: what rlm-kernel adds, each figure beside its floor.

Every figure is printed next to a floor measured in the same run (a bare kernel round trip, a
raw socket echo, an mmap decode of the same file, a bare SDK call), with ``--compare rlms``
next to the reference implementation with the ratio, and with its target, PASS or MISS. Models
are scripted and served on 127.0.0.1 by :class:`~rlm_kernel.testing.FakeModelServer`, reached
through the real ``openai`` SDK by both implementations. See ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlm_kernel.errors import UsageError

from .models import BenchModels
from .ours import BenchFailed
from .plan import DEFAULT, FULL, PARTS, QUICK, Plan
from .report import Figure, table
from .rlms import ReferenceUnavailable, attach, default_venv, ensure_venv, measure

__all__ = ["Figure", "Plan", "ReferenceUnavailable", "main", "run"]

PROG = "rlm-kernel bench overhead"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, exit 2: a user mistake, not a crash.
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    """The command's options."""
    p = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a tiny configuration (seconds)")
    size.add_argument("--full", action="store_true", help="context sizes up to 1 GiB")
    p.add_argument("--sizes", help="context sizes in MiB, comma-separated (e.g. 1,10,100)")
    p.add_argument("--only", help=f"run these parts only, comma-separated: {','.join(PARTS)}")
    p.add_argument("--compare", choices=["rlms"], help="measure the reference implementation too")
    p.add_argument("--rlms-venv", type=Path, help=f"its environment (default: {default_venv()})")
    p.add_argument(
        "--rlms-python",
        default=sys.executable,
        help="the interpreter that creates that environment (default: this one)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--cpu", type=int, action="append", help="run on these CPUs only (repeatable)")
    return p


def plan_from(args: argparse.Namespace) -> Plan:
    """The plan the options ask for."""
    plan = QUICK if args.quick else FULL if args.full else DEFAULT
    if args.sizes:
        try:
            sizes = tuple(int(s) for s in args.sizes.split(","))
        except ValueError:
            sizes = ()
        if not sizes or min(sizes) < 1:
            raise UsageError(f"--sizes takes whole MiB, comma-separated, not {args.sizes!r}")
        plan = replace(plan, sizes_mb=sizes)
    if args.only:
        parts = tuple(p.strip() for p in args.only.split(","))
        unknown = sorted(set(parts) - set(PARTS))
        if unknown:
            raise UsageError(f"unknown part {unknown[0]!r} for --only; one of {', '.join(PARTS)}")
        plan = replace(plan, parts=tuple(p for p in PARTS if p in parts))
    return plan


async def run(
    plan: Plan,
    *,
    log: Callable[[str], None] = lambda line: None,
    rlms_python: Path | None = None,
) -> dict[str, Any]:
    """Measure every part of ``plan``; with ``rlms_python``, rlms beside us.

    Returns:
        ``{"figures": [Figure, ...], "rlms": {...} or None, "duration_s": ...}``.
    """
    from .ours import Suite

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="rlmb-runs-"))
    figures: list[Figure] = []
    reference = None
    try:
        latencies = [latency for latency, _ in plan.batched]
        with BenchModels(latencies) as models, _environment(models.env()):
            suite = Suite(models, plan, work, log)
            try:
                for part in plan.parts:
                    log(f"-- {part}")
                    figures += await getattr(suite, part)()
            finally:
                await suite.aclose()
            if rlms_python is not None:
                log("-- rlms (every part, both kernel modes)")
                reference = await asyncio.to_thread(measure, models, plan, rlms_python, log)
                attach(figures, reference, plan)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"figures": figures, "rlms": reference, "duration_s": time.perf_counter() - started}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the ``with`` block (our runs' SDK reads them), then restore."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def main(argv: list[str]) -> int:
    """Run the suite from command-line arguments.

    Returns:
        0 once measured (the table says which targets were met), 1 when a measurement could
        not be taken, 2 on bad usage or when the rlms environment cannot be built.
    """
    args = parser().parse_args(argv)

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    try:
        plan = plan_from(args)
        if args.cpu:
            os.sched_setaffinity(0, set(args.cpu))
        python = None
        if args.compare == "rlms":
            python = ensure_venv(args.rlms_venv or default_venv(), args.rlms_python, log)
        before = machine()
        report = asyncio.run(run(plan, log=log, rlms_python=python))
    except (UsageError, ReferenceUnavailable) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except (BenchFailed, OSError) as exc:
        # A measurement that could not be taken: say which, without a traceback.
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    figures: list[Figure] = report["figures"]
    print(table(figures))
    if args.json:
        data = {
            "figures": [f.to_dict() for f in figures],
            "rlms": report["rlms"],
            "plan": plan.to_dict(),
            "machine": {**before, "load_average_after": machine()["load_average"]},
            "duration_s": round(report["duration_s"], 2),
        }
        args.json.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return 0
