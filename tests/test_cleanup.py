"""Runs leave nothing behind: no kernel process, socket, connection file or temp folder."""

from __future__ import annotations

import asyncio
import glob
import os
import tempfile
from pathlib import Path

import nbformat
import pytest
from jupyter_core.paths import jupyter_runtime_dir

from rlm_kernel import RLM

pytestmark = pytest.mark.slow


def children() -> set[int]:
    pids: set[int] = set()
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        try:
            pids.update(int(p) for p in Path(path).read_text().split())
        except FileNotFoundError:  # the thread ended since the listing; it has no children
            continue
    return pids


def leftovers() -> set[str]:
    tmp = tempfile.gettempdir()
    found = set(glob.glob(os.path.join(tmp, "rlm-*")))
    found |= set(glob.glob(os.path.join(jupyter_runtime_dir(), "kernel-*.json")))
    return found


def scripted(*replies: str):
    it = iter(replies)

    async def model(messages):
        return next(it)

    return model


async def failing_model(messages):
    raise RuntimeError("the model API is down")


def kinds():
    """Twenty runs of five kinds: answered, timeout, kernel death, model error, interrupted."""
    return [
        ("answered", lambda: scripted("```repl\nx = len(context)\n```\nFINAL_VAR(x)")),
        ("timeout", lambda: scripted("```repl\nwhile True: pass\n```", "FINAL(stopped)")),
        ("died", lambda: scripted("```repl\nimport os; os._exit(1)\n```", "FINAL(restarted)")),
        ("error", lambda: failing_model),
        ("interrupted", lambda: scripted("```repl\nimport time; time.sleep(30)\n```")),
    ] * 4


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc")
def test_twenty_runs_leave_nothing_behind(tmp_path, monkeypatch):
    # A private temp folder, so kernels of other processes on the machine do not count.
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    # And a private runtime folder: kernels that other test processes start at the same time
    # write their connection files to the shared one.
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    before_children, before_files = children(), leftovers()
    statuses = []

    async def run_all():
        for i, (kind, make_model) in enumerate(kinds()):
            cell_timeout = 30 if kind == "interrupted" else 0.5
            rlm = RLM(make_model(), scripted(), cell_timeout=cell_timeout, max_steps=3)
            task = asyncio.ensure_future(rlm.arun("q", "ctx", notebook=tmp_path / f"{i}.ipynb"))
            if kind == "interrupted":
                await asyncio.sleep(1.5)
                task.cancel()
            try:
                statuses.append((kind, (await task).status))
            except asyncio.CancelledError:
                statuses.append((kind, "cancelled"))
            except RuntimeError:
                statuses.append((kind, "raised"))

    asyncio.run(run_all())
    expected = {
        "answered": "answered",
        "timeout": "answered",
        "died": "answered",
        "error": "raised",
        "interrupted": "cancelled",
    }
    assert statuses == [(k, expected[k]) for k, _ in kinds()]
    assert children() - before_children == set()
    assert leftovers() - before_files == set()
    recorded = {
        nbformat.read(tmp_path / f"{i}.ipynb", as_version=4).metadata.rlm.status for i in range(20)
    }
    assert recorded == {"answered", "error", "interrupted"}
