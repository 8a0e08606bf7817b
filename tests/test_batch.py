"""``rlm-kernel batch`` and ``rlm_kernel.batch``: many scripted runs, killed and resumed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

import rlm_kernel
from rlm_kernel.batching import BatchSummary, load_tasks, read_results
from rlm_kernel.errors import UsageError

ROOT, SUB = "root-model", "sub-model"
_TASK = re.compile(r"Task (\d+):")
_RESULT = re.compile(r"RESULT (\d+)")


def square_model(messages: list[dict]) -> str:
    """Root model: square the number in the context, then answer with what the kernel printed."""
    time.sleep(0.05)  # like a real model, so several tasks are in flight when the batch dies
    if len(messages) <= 2:
        return "```repl\nprint('RESULT', int(context.strip()) ** 2)\n```"
    return "FINAL(" + _RESULT.findall(messages[-1]["content"])[-1] + ")"


def write_tasks(tmp_path: Path, n: int) -> Path:
    lines = []
    for i in range(n):
        (tmp_path / f"n{i}.txt").write_text(str(i + 2), encoding="utf-8")
        task = {"id": f"t{i}", "question": f"Task {i}: what is the number squared?"}
        lines.append(json.dumps({**task, "context": f"n{i}.txt"}))
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def batch_command(tasks: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "rlm_kernel", "batch", str(tasks),
        "--workers", "4", "--out", str(out),
        "--model", f"anthropic:{ROOT}", "--sub-model", f"anthropic:{SUB}",
    ]  # fmt: skip


def asked_tasks(requests) -> set[int]:
    return {int(i) for r in requests for i in _TASK.findall(json.dumps(r.body))}


@pytest.mark.slow
def test_killed_batch_resumes_with_only_the_unfinished_tasks(fake_model_server, tmp_path):
    fake_model_server.add_model(ROOT, square_model)
    fake_model_server.add_model(SUB, "unused")
    tasks, out = write_tasks(tmp_path, 40), tmp_path / "out"
    first = subprocess.Popen(
        batch_command(tasks, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    results = out / "results.jsonl"
    deadline = time.monotonic() + 300
    while not results.exists() or len(results.read_text().splitlines()) < 20:
        assert first.poll() is None, first.stderr.read().decode()
        assert time.monotonic() < deadline, "the batch made no progress"
        time.sleep(0.05)
    first.kill()  # SIGKILL: no clean-up at all
    first.wait(30)
    first.stderr.close()
    done_first = {k for k, r in read_results(out).items() if r["status"] == "answered"}
    assert 20 <= len(done_first) < 40
    seen = len(fake_model_server.requests)

    second = subprocess.run(batch_command(tasks, out), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert f"{len(done_first)} task(s) finished before" in second.stderr

    # The second invocation asked the model about the unfinished tasks only, each of them.
    redone = asked_tasks(fake_model_server.requests[seen:])
    assert {f"t{i}" for i in redone} == {f"t{i}" for i in range(40)} - done_first
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    answered = [r["id"] for r in records if r["status"] == "answered"]
    assert sorted(answered) == sorted(f"t{i}" for i in range(40))  # each exactly once
    final = read_results(out)
    for i in range(40):
        record = final[f"t{i}"]
        assert record["answer"] == str((i + 2) ** 2)
        nb = nbformat.read(out / record["notebook"], as_version=4)
        assert nb.metadata.rlm["status"] == "answered"
    assert "answered" in second.stderr and "cost p95" in second.stderr


def test_python_batch_writes_results_and_a_summary(fake_model_server, tmp_path):
    fake_model_server.add_model(ROOT, square_model)
    fake_model_server.add_model(SUB, "unused")
    tasks = load_tasks(write_tasks(tmp_path, 3))
    tasks[2].limits["max_steps"] = 1  # a per-task override: no room to answer in the loop
    summary = rlm_kernel.batch(
        tasks,
        out=tmp_path / "o",
        workers=2,
        model=f"anthropic:{ROOT}",
        sub_model=f"anthropic:{SUB}",
    )
    assert isinstance(summary, BatchSummary)
    by_id = {r["id"]: r for r in summary.records}
    assert by_id["t0"]["answer"] == "4" and by_id["t1"]["answer"] == "9"
    assert by_id["t2"]["steps"] >= 1
    assert sum(summary.counts().values()) == 3
    assert set(summary.costs()) == {"total", "mean", "median", "p95"}
    again = rlm_kernel.batch(
        tasks,
        out=tmp_path / "o",
        workers=2,
        model=f"anthropic:{ROOT}",
        sub_model=f"anthropic:{SUB}",
    )
    finished = sum(r["status"] in ("answered", "no_answer") for r in summary.records)
    assert again.skipped == finished


def test_bad_tasks_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "tasks.jsonl"
    bad.write_text('{"id": "a", "question": "q", "context": "x.txt"}\n{"id": "a"}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "rlm_kernel", "batch", str(bad), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "line 2" in proc.stderr, proc.stderr
    with pytest.raises(UsageError, match="appears twice"):
        bad.write_text('{"id": 1, "question": "q", "context": "x"}\n' * 2)
        load_tasks(bad)


def test_ctrl_c_keeps_finished_results_and_marks_running_notebooks(fake_model_server, tmp_path):
    slow_started = tmp_path / "started"

    def slow_model(messages: list[dict]) -> str:
        if "Task 1:" in json.dumps(messages):
            where = str(slow_started)
            touch = f"open({where!r}, 'w').close()"
            return f"```repl\n{touch}\nimport time\ntime.sleep(600)\n```"
        return square_model(messages)

    fake_model_server.add_model(ROOT, slow_model)
    fake_model_server.add_model(SUB, "unused")
    tasks, out = write_tasks(tmp_path, 2), tmp_path / "out"
    proc = subprocess.Popen(
        batch_command(tasks, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (slow_started.exists() and "t0" in read_results(out)):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert read_results(out)["t0"]["status"] == "answered" and "t1" not in read_results(out)
    nb = nbformat.read(out / "runs" / "t1.ipynb", as_version=4)
    assert nb.metadata.rlm["status"] == "interrupted"
