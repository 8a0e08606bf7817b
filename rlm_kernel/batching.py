"""Many questions, each its own run and kernel, N at a time: ``rlm-kernel batch``.

A batch reads tasks (one JSON object per line: ``id``, ``question``, ``context`` path or paths,
optional ``model``, ``sub_model`` and limits such as ``max_steps``), runs ``workers`` of them at
once with :meth:`RLM.arun`, writes each run's notebook to ``OUT/runs/<id>.ipynb`` and appends
one line per finished task to ``OUT/results.jsonl`` (written whole and flushed to disk, so a
killed batch loses at most the tasks in flight). Started again with the same ``OUT``, it skips
tasks whose last record is ``answered`` or ``no_answer`` and runs the others again.

``max_cost_usd`` is shared by the whole batch, earlier invocations on the same ``OUT``
included: no task starts once it is spent, and each task runs with a cost limit no larger than
what was left when it started.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import RLMKernelError, UsageError
from .llm import DEFAULT_ROOT_MODEL, DEFAULT_SUB_MODEL
from .run import RLM, run_hook, run_sync
from .types import Limits, RunResult

__all__ = ["BatchSummary", "Progress", "Task", "abatch", "batch", "load_tasks"]

RESULTS = "results.jsonl"
RUNS = "runs"
FINISHED = frozenset({"answered", "no_answer"})
_LIMIT_NAMES = frozenset(f.name for f in dataclasses.fields(Limits))
_TASK_KEYS = frozenset({"id", "question", "context", "model", "sub_model", "limits"})
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclasses.dataclass
class Task:
    """One question of a batch.

    Attributes:
        id: unique within the batch; names the task's notebook.
        question: what to ask.
        context: a path, or a list of paths (a list context).
        model: the root model for this task (default: the batch's).
        sub_model: the sub-model for this task (default: the batch's).
        limits: ``Limits`` fields that override the batch's for this task.
    """

    id: str
    question: str
    context: str | list[str]
    model: str | None = None
    sub_model: str | None = None
    limits: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], base: Path | None = None) -> Task:
        """Read a task; relative context paths are taken from ``base``.

        Raises:
            UsageError: a field is missing, mistyped or unknown.
        """
        if not isinstance(obj, Mapping):
            raise UsageError("a task must be a JSON object")
        unknown = set(obj) - _TASK_KEYS - _LIMIT_NAMES
        if unknown:
            raise UsageError(f"unknown task field(s): {', '.join(sorted(unknown))}")
        task_id, question, context = obj.get("id"), obj.get("question"), obj.get("context")
        if not isinstance(task_id, (str, int)) or isinstance(task_id, bool) or task_id == "":
            raise UsageError("a task needs an 'id' (a string or number)")
        if not isinstance(question, str) or not question.strip():
            raise UsageError(f"task {task_id}: 'question' must be a non-empty string")
        paths = [context] if isinstance(context, str) else context
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise UsageError(f"task {task_id}: 'context' must be a path or a list of paths")
        resolved = [str(base / p) if base is not None else p for p in paths]
        limits = dict(obj.get("limits") or {})
        limits.update({k: v for k, v in obj.items() if k in _LIMIT_NAMES})
        if set(limits) - _LIMIT_NAMES:
            bad = ", ".join(sorted(set(limits) - _LIMIT_NAMES))
            raise UsageError(f"task {task_id}: unknown limit(s): {bad}")
        for key in ("model", "sub_model"):
            if obj.get(key) is not None and not isinstance(obj[key], str):
                raise UsageError(f"task {task_id}: {key!r} must be PROVIDER:MODEL")
        return cls(
            id=str(task_id),
            question=question,
            context=resolved[0] if isinstance(context, str) else resolved,
            model=obj.get("model"),
            sub_model=obj.get("sub_model"),
            limits=limits,
        )


def load_tasks(path: str | os.PathLike[str]) -> list[Task]:
    """Read a tasks file (JSON lines; blank lines and lines starting with ``#`` are skipped).

    Raises:
        UsageError: the file cannot be read, a line is not a valid task, or ids repeat.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UsageError(f"cannot read the tasks file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"the tasks file {path} is not UTF-8 text") from None
    tasks, seen = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            task = Task.from_dict(json.loads(line), base=path.parent)
        except ValueError as e:  # JSON errors and UsageError alike
            raise UsageError(f"{path}, line {number}: {e}") from None
        if task.id in seen:
            raise UsageError(f"{path}, line {number}: task id {task.id!r} appears twice")
        seen.add(task.id)
        tasks.append(task)
    if not tasks:
        raise UsageError(f"the tasks file {path} holds no task")
    return tasks


def read_results(out: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The last record of each task in ``OUT/results.jsonl`` (a torn last line is ignored)."""
    records: dict[str, dict[str, Any]] = {}
    try:
        text = (Path(out) / RESULTS).read_text(encoding="utf-8")
    except FileNotFoundError:
        return records
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the line a killed batch was writing
        if isinstance(record, dict) and "id" in record:
            records[str(record["id"])] = record
    return records


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[rank]


@dataclasses.dataclass
class BatchSummary:
    """What a batch did, read back from its results file.

    Attributes:
        out: the batch's folder.
        records: the last record of every task, in task order (missing tasks left out).
        skipped: tasks already finished by an earlier invocation.
        not_started: tasks not started because the shared cost limit was spent.
        interrupted: the batch was stopped (Ctrl-C) before every task ran.
    """

    out: Path
    records: list[dict[str, Any]]
    skipped: int = 0
    not_started: int = 0
    interrupted: bool = False

    def counts(self) -> dict[str, int]:
        counts = {"answered": 0, "no_answer": 0, "error": 0, "interrupted": 0}
        for record in self.records:
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        return counts

    def costs(self) -> dict[str, float]:
        values = [float(r.get("cost_usd") or 0.0) for r in self.records]
        if not values:
            return {"total": 0.0, "mean": 0.0, "median": 0.0, "p95": 0.0}
        return {
            "total": sum(values),
            "mean": statistics.fmean(values),
            "median": statistics.median(values),
            "p95": _percentile(values, 0.95),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "results": str(self.out / RESULTS),
            "tasks": len(self.records),
            "skipped": self.skipped,
            "not_started": self.not_started,
            "interrupted": self.interrupted,
            "counts": self.counts(),
            "cost_usd": self.costs(),
        }

    def table(self) -> str:
        """The summary as a small text table."""
        counts, costs = self.counts(), self.costs()
        rows = [(status.replace("_", " "), str(n)) for status, n in counts.items() if n]
        rows += [("tasks", str(len(self.records)))]
        if self.skipped:
            rows.append(("done before", str(self.skipped)))
        if self.not_started:
            rows.append(("not started (cost)", str(self.not_started)))
        rows += [(f"cost {k}", f"${v:.4f}") for k, v in costs.items()]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(width)}  {v.rjust(10)}" for k, v in rows]
        return "\n".join(["-" * (width + 12), *lines, "-" * (width + 12)])


class Progress:
    """A progress bar on stderr (``tqdm``, from the ``batch`` extra), or a line per task.

    Args:
        enabled: ``False`` prints nothing.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def hooks(self) -> dict[str, Callable[..., None]]:
        """``on_start`` and ``on_result`` for :func:`abatch`."""
        return {"on_start": self.on_start, "on_result": self.on_result} if self.enabled else {}

    def on_start(self, *, total: int, skipped: int) -> None:
        if skipped:
            self._write(f"batch: {skipped} task(s) finished before, {total} to run")
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, unit="task", dynamic_ncols=True, file=sys.stderr)

    def on_result(self, *, record: dict[str, Any], done: int, total: int) -> None:
        cost = record.get("cost_usd")
        line = f"{record['id']}: {record['status']}" + (f" ${cost:.4f}" if cost else "")
        if self._bar is None:
            self._write(f"[{done}/{total}] {line}")
            return
        self._bar.set_postfix_str(line, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def _record(task: Task, result: RunResult, out: Path) -> dict[str, Any]:
    usage = result.usage
    return {
        "id": task.id,
        "status": result.status,
        "answer": result.answer,
        "stop_reason": result.stop_reason,
        "steps": result.steps,
        "subcalls": result.subcalls,
        "input_tokens": sum(u.input_tokens for u in usage.values()),
        "output_tokens": sum(u.output_tokens for u in usage.values()),
        "cost_usd": result.cost_usd,
        "duration_s": round(result.duration_s, 3),
        "notebook": os.path.relpath(result.notebook, out) if result.notebook else None,
        "error": result.error,
    }


class _Spend:
    """The batch's shared cost account: finished tasks plus what running tasks spent so far."""

    def __init__(self, limit: float | None, earlier: float) -> None:
        self.limit = limit
        self.finished = earlier
        self.running: dict[str, float] = {}

    @property
    def spent(self) -> float:
        return self.finished + sum(self.running.values())

    def left(self) -> float | None:
        return None if self.limit is None else self.limit - self.spent


async def abatch(
    tasks: Iterable[Task | Mapping[str, Any]],
    *,
    out: str | os.PathLike[str],
    workers: int = 4,
    model: str | Any = DEFAULT_ROOT_MODEL,
    sub_model: str | Any = DEFAULT_SUB_MODEL,
    limits: Limits | None = None,
    max_cost_usd: float | None = None,
    session: Callable[..., Any] | None = None,
    on_result: Callable[..., object] | None = None,
    on_start: Callable[..., object] | None = None,
) -> BatchSummary:
    """Run every task not finished yet in ``out``, ``workers`` at a time.

    Args:
        tasks: :class:`Task` objects or dicts of the tasks-file form.
        out: the batch's folder (``results.jsonl``, ``runs/``); reuse it to resume.
        workers: runs at once, each with its own kernel.
        model: the root model of tasks that name none.
        sub_model: the sub-model of tasks that name none.
        limits: the limits of every run; a task's own fields override them.
        max_cost_usd: dollars for the whole batch, earlier invocations included.
        session: where code runs (``RLM(session=)``), e.g. a :class:`rlm_kernel.gateway.Gateway`.
        on_result: hook ``on_result(record=, done=, total=)`` after each finished task.
        on_start: hook ``on_start(total=, skipped=)`` once the work is known.

    Returns:
        The summary; a cancelled batch (Ctrl-C) raises instead, after its finished results
        were written and its running notebooks marked ``interrupted``.

    Raises:
        UsageError: bad tasks or options, or the folder cannot be written.
    """
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, not {workers}")
    items = [t if isinstance(t, Task) else Task.from_dict(t) for t in tasks]
    out = Path(out)
    try:
        (out / RUNS).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot write the batch folder {out}: {e.strerror or e}") from None
    done = read_results(out)
    todo = [t for t in items if done.get(t.id, {}).get("status") not in FINISHED]
    skipped = len(items) - len(todo)
    earlier = sum(float(r.get("cost_usd") or 0.0) for r in done.values())
    spend = _Spend(max_cost_usd, earlier)
    base = limits or Limits()
    names: dict[str, str] = {}
    for task in items:
        stem = _SAFE.sub("_", task.id).strip("._") or "task"
        while stem in names.values():
            stem += "_"
        names[task.id] = stem
    queue: asyncio.Queue[Task] = asyncio.Queue()
    for task in todo:
        queue.put_nowait(task)
    not_started = 0
    finished = 0
    await run_hook(on_start, total=len(todo), skipped=skipped)

    async def run_one(task: Task) -> dict[str, Any]:
        task_limits = dict(task.limits)
        left = spend.left()
        if left is not None:
            own = task_limits.get("max_cost_usd", base.max_cost_usd)
            task_limits["max_cost_usd"] = left if own is None else min(own, left)

        def on_step(*, cost_usd: float | None = None, **_: Any) -> None:
            spend.running[task.id] = float(cost_usd or 0.0)

        try:
            rlm = RLM(
                task.model or model,
                task.sub_model or sub_model,
                limits=base,
                session=session,
                display=False,
                on_step=on_step,
                **task_limits,
            )
            paths = task.context
            # A str context is text to arun: the task's are file paths.
            context = Path(paths) if isinstance(paths, str) else [Path(p) for p in paths]
            result = await rlm.arun(task.question, context, notebook=notebook_of(task))
        except Exception as e:  # one failing task must not stop the others
            error = str(e) if isinstance(e, RLMKernelError) else f"{type(e).__name__}: {e}"
            return {"id": task.id, "status": "error", "error": error, "cost_usd": 0.0}
        finally:
            spend.running.pop(task.id, None)
        return _record(task, result, out)

    def notebook_of(task: Task) -> Path:
        return out / RUNS / f"{names[task.id]}.ipynb"

    results_file = open(out / RESULTS, "a", encoding="utf-8")  # noqa: SIM115 (closed below)

    async def worker() -> None:
        nonlocal not_started, finished
        while True:
            try:
                task = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            left = spend.left()
            if left is not None and left <= 0:
                not_started += 1
                continue
            record = await run_one(task)
            spend.finished += float(record.get("cost_usd") or 0.0)
            # One write of one whole line, flushed to disk: a kill tears at most this line.
            results_file.write(json.dumps(record, ensure_ascii=False) + "\n")
            results_file.flush()
            os.fsync(results_file.fileno())
            finished += 1
            await run_hook(on_result, record=record, done=finished, total=len(todo))

    try:
        await asyncio.gather(*(worker() for _ in range(min(workers, max(1, len(todo))))))
    finally:
        results_file.close()
    final = read_results(out)
    records = [final[t.id] for t in items if t.id in final]
    return BatchSummary(out, records, skipped=skipped, not_started=not_started)


batch = run_sync(abatch)
