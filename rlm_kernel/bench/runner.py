"""Run a benchmark: every method on every instance, ``workers`` at a time, resumable.

Layout of the output folder ``OUT``::

    OUT/runs/<method>/<instance>.ipynb     every run's notebook (baselines included)
    OUT/results/<method>/<instance>.json   one scored result per run, written whole
    OUT/results.md, results.json, *.png    the table and plots (:mod:`.report`)
    OUT/.rlm-cache.sqlite                  the model-call cache, when it is on

Started again with the same ``OUT`` (and the same task, seed and sizes), runs whose result file
holds a finished run (``answered`` or ``no_answer``) are skipped; the others run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import prompts
from ..errors import RLMKernelError, UsageError
from ..llm import LLM, resolve
from ..llm.cache import CallCache
from ..prompts import context_window
from ..run import close_models
from ..types import Limits
from . import report, tasks
from .methods import METHODS, Models, Outcome, run_method
from .scorers import score

__all__ = ["DEFAULT_JOB_TIMEOUT", "BenchConfig", "abench", "bench", "read_results"]

FINISHED = frozenset({"answered", "no_answer"})
DEFAULT_JOB_TIMEOUT = 3_600.0  # seconds for one run when the run has no --timeout of its own
JOB_SLACK = 120.0  # beyond a run's own --timeout, before the runner gives up waiting for it


@dataclass
class BenchConfig:
    """What one ``rlm-kernel bench TASK`` invocation runs.

    Attributes:
        task: a name of :data:`rlm_kernel.bench.tasks.TASKS`.
        model: the root model (``PROVIDER:MODEL`` or an LLM).
        sub_model: the sub-model.
        methods: names of :data:`rlm_kernel.bench.methods.METHODS`.
        sizes: context sizes in tokens (default: the task's).
        n: instances per size.
        seed: the generators' seed.
        workers: runs at once.
        out: the output folder.
        limits: the limits of each run.
        window: the input window (tokens) the baselines assume (default: the model's).
        cache: answer repeated model calls from ``OUT/.rlm-cache.sqlite``.
    """

    task: str
    model: str | LLM
    sub_model: str | LLM
    methods: Sequence[str] = ("rlm", "direct", "summary", "retrieval")
    sizes: Sequence[int] | None = None
    n: int = 5
    seed: int = 0
    workers: int = 2
    out: Path = Path("rlm-bench")
    limits: Limits = field(default_factory=Limits)
    window: int | None = None
    cache: bool = True

    def check(self) -> None:
        """Raise :class:`UsageError` naming the first bad setting."""
        if self.task not in tasks.TASKS:
            raise UsageError(f"unknown task {self.task!r}; tasks are: {', '.join(tasks.TASKS)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise UsageError(
                f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
                f"methods are: {', '.join(METHODS)}"
            )
        for name in ("n", "workers"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be at least 1, not {getattr(self, name)}")
        if self.window is not None and self.window < 2_000:
            raise UsageError(f"--window must be at least 2000 tokens, not {self.window}")


def read_results(out: Path) -> list[dict[str, Any]]:
    """Every result file under ``OUT/results`` (unreadable ones are skipped)."""
    found = []
    for path in sorted((Path(out) / "results").glob("*/*.json")):
        with contextlib.suppress(OSError, ValueError):
            found.append(json.loads(path.read_text(encoding="utf-8")))
    return found


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _finished(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("status") in FINISHED
    except (OSError, ValueError, AttributeError):
        return False


def _wrap_cache(llms: list[LLM], out: Path) -> tuple[list[LLM], CallCache]:
    cache = CallCache.default_for(out)
    # As in a run with a cache: an RLM's step feedback states its spending so far, which a run
    # made again never repeats exactly, so those lines are no part of the key.
    return [cache.wrap(llm, normalize=prompts.cache_view) for llm in llms], cache


def _deadline(limits: Limits) -> float:
    return DEFAULT_JOB_TIMEOUT if limits.timeout is None else limits.timeout + JOB_SLACK


def _progress(record: dict[str, Any], done: int, total: int) -> None:
    cost = record.get("cost_usd")
    money = "" if cost is None else f", ${cost:.4f}"
    print(
        f"[{done}/{total}] {record['method']} {record['id']}: {record['status']}, "
        f"score {record['score']:.2f}{money}, {record['duration_s']:.1f} s",
        file=sys.stderr,
    )


async def abench(
    config: BenchConfig,
    *,
    on_result: Callable[[dict[str, Any], int, int], None] | None = _progress,
) -> report.Report:
    """Run ``config`` and write its results table and plots; returns the report.

    Raises:
        UsageError: a bad setting, an unknown model provider, an unwritable ``out``.
    """
    config.check()
    sizes = tuple(config.sizes or tasks.TASKS[config.task].sizes)
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the output folder {out}: {e.strerror or e}") from None
    instances = []
    for size in sizes:
        try:
            made = tasks.generate(config.task, n=config.n, seed=config.seed, size_tokens=size)
        except RuntimeError as e:  # e.g. no verified CodeQA question at a tiny size
            raise UsageError(str(e)) from None
        instances.extend(made)
    resolved = [resolve(config.model), resolve(config.sub_model)]
    cache = None
    if config.cache:
        resolved, cache = _wrap_cache(resolved, out)
    root, sub = resolved
    window = config.window or context_window(root.name)[0]
    models = Models(root=root, sub=sub, window=window)
    jobs = [
        (method, inst)
        for inst in instances
        for method in config.methods
        if not _finished(out / "results" / method / f"{inst.id}.json")
    ]
    slots = asyncio.Semaphore(config.workers)
    done = 0
    total = len(jobs)

    async def one(method: str, inst: tasks.Instance) -> None:
        nonlocal done
        async with slots:
            record = await _run_job(method, inst, models, config.limits, out)
        _write_json(out / "results" / method / f"{inst.id}.json", record)
        done += 1
        if on_result is not None:
            on_result(record, done, total)

    try:
        await asyncio.gather(*(one(m, i) for m, i in jobs))
    finally:
        await close_models([root, sub])
        if cache is not None:
            cache.close()
    wanted = {(m, i.id) for i in instances for m in config.methods}
    records = [r for r in read_results(out) if (r.get("method"), r.get("id")) in wanted]
    made = report.build(records, config=_describe(config, sizes, window, cache is not None))
    report.write(made, out)
    return made


async def _run_job(
    method: str, inst: tasks.Instance, models: Models, limits: Limits, out: Path
) -> dict[str, Any]:
    notebook = out / "runs" / method / f"{inst.id}.ipynb"
    notebook.parent.mkdir(parents=True, exist_ok=True)
    notebook.unlink(missing_ok=True)  # an interrupted earlier attempt
    deadline = _deadline(limits)
    try:
        outcome = await asyncio.wait_for(
            run_method(method, inst, models, limits, notebook), deadline
        )
    except asyncio.TimeoutError:
        outcome = Outcome(None, "error", str(notebook), error=f"no result within {deadline:g} s")
    except RLMKernelError as e:  # e.g. a missing API key, a context that cannot be written
        outcome = Outcome(None, "error", None, error=str(e).splitlines()[0])
    record = {
        **inst.describe(),
        "method": method,
        "score": score(inst.scorer, outcome.answer, inst.gold),
        **outcome.to_dict(),
    }
    if record["notebook"]:
        record["notebook"] = os.path.relpath(record["notebook"], out)
    return record


def _describe(config: BenchConfig, sizes: tuple[int, ...], window: int, cache: bool) -> dict:
    def name(m: Any) -> str:
        return m if isinstance(m, str) else getattr(m, "name", repr(m))

    return {
        "task": config.task,
        "model": name(config.model),
        "sub_model": name(config.sub_model),
        "methods": list(config.methods),
        "sizes": list(sizes),
        "n": config.n,
        "seed": config.seed,
        "window": window,
        "cache": cache,
        "limits": config.limits.to_dict(),
    }


def bench(config: BenchConfig, **kwargs: Any) -> report.Report:
    """The synchronous twin of :func:`abench`, for scripts (not inside a running event loop)."""
    return asyncio.run(abench(config, **kwargs))
