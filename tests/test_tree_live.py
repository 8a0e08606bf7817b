"""Run trees, watched and stopped: nested progress, and Stop / Ctrl-C / cancel end every run."""

from __future__ import annotations

import asyncio
import glob
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_core.paths import jupyter_runtime_dir

from rlm_kernel import RLM, Usage
from rlm_kernel.live import LiveDisplay
from rlm_kernel.progress import ChildTracker, TerminalProgress
from rlm_kernel.types import RunResult

needs_proc = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc")

# -- progress from on_child events ------------------------------------------------------------


def result(status: str, steps: int, cost: float | None = 0.002) -> RunResult:
    return RunResult(
        answer="7" if status == "answered" else None,
        status=status,
        notebook="",
        run_id="r",
        steps=steps,
        usage={"root": Usage(calls=steps, input_tokens=100, output_tokens=10)},
        cost_usd=cost,
    )


def events(root: Path) -> list[dict]:
    """A child with a grandchild, and a second child, as a run reports them."""
    kids = root.with_name(f"{root.stem}.children")
    first, second = str(kids / "1.1-1.ipynb"), str(kids / "1.1-2.ipynb")
    grand = str(kids / "1.1-1.children" / "2.1-1.ipynb")
    step = {"max_steps": 5, "blocks": 1, "subcalls": 0, "text": "```repl\n1\n```"}
    usage = {"root": Usage(calls=1, input_tokens=40, output_tokens=2)}
    return [
        dict(event="start", notebook=first, depth=2, question="count\nthe apples", result=None),
        dict(event="start", notebook=second, depth=2, question="count pears", result=None),
        dict(event="step", notebook=first, depth=2, question="", step=1, usage=usage,
             cost_usd=0.001, **step),
        dict(event="start", notebook=grand, depth=3, question="count figs", result=None),
        dict(event="end", notebook=second, depth=2, question="", result=result("answered", 1)),
        dict(event="step", notebook=grand, depth=3, question="", step=2, usage=usage,
             cost_usd=None, **step),
    ]  # fmt: skip


def test_terminal_progress_nests_the_lines_of_children(tmp_path):
    out = io.StringIO()
    progress = TerminalProgress(out)
    hooks = progress.hooks()
    for event in events(tmp_path / "run.ipynb"):
        hooks["on_child"](**event)
        if event["event"] == "step":  # the step's code has run: its line comes now
            hooks["on_child"](**{**event, "event": "step_end", "step_subcalls": 1})
    lines = out.getvalue().splitlines()
    assert lines[0] == "  [1.1-1] started: count the apples"
    assert lines[1] == "  [1.1-2] started: count pears"
    assert lines[2] == (
        "  [1.1-1] step 1/5: ran 1 code block, 1 sub-call · total 42 tokens, $0.0010"
    )
    assert lines[3] == "    [1.1-1/2.1-1] started: count figs"
    assert lines[4].startswith("  [1.1-2] answered after 1 step · 110 tokens · $0.0020 · ")
    assert lines[5] == (
        "    [1.1-1/2.1-1] step 2/5: ran 1 code block, 1 sub-call · total 42 tokens, cost unknown"
    )
    assert len(lines) == 6


def test_the_tracker_keeps_tree_order_and_settles_from_the_notebooks(tmp_path):
    tracker = ChildTracker(tmp_path / "run.ipynb")
    for event in events(tmp_path / "run.ipynb"):
        tracker.update(**event)
    assert [(c.label, c.state) for c in tracker.ordered()] == [
        ("1.1-1", "running"),
        ("1.1-1/2.1-1", "running"),
        ("1.1-2", "answered"),
    ]
    assert tracker.counts() == (2, 1)
    # Children that never reported their end take what their notebooks say (here: unreadable).
    assert [c.label for c in tracker.settle()] == ["1.1-1", "1.1-1/2.1-1"]
    assert {c.state for c in tracker.ordered()} == {"error", "answered"}


def test_the_widget_lists_children_running_first_when_there_are_many(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "run.ipynb"
    live = LiveDisplay(root, max_steps=5)
    assert live.hooks()["on_child"] == live.on_child
    for event in events(root):
        live.on_child(**event)
    listing = live.children_list.value
    assert "child runs: 2 running · 1 ended" in listing
    link = "<a href='run.children/1.1-1.children/2.1-1.ipynb' target='_blank'>1.1-1/2.1-1</a>"
    assert link in listing
    assert listing.index(">1.1-1<") < listing.index(">1.1-1/2.1-1<") < listing.index(">1.1-2<")
    assert "step 1 of 5" in listing and "answered" in listing and "count the apples" in listing
    assert "padding-left:1.5em" in listing  # the grandchild is indented
    kids = root.with_name("run.children")
    for n in range(3, 3 + LiveDisplay.MAX_CHILD_ROWS):
        common = {"notebook": str(kids / f"1.1-{n}.ipynb"), "depth": 2, "question": f"q{n}"}
        live.on_child(event="start", result=None, **common)
        live.on_child(event="end", result=result("no_answer", 2), **common)
    listing = live.children_list.value
    assert f"2 running · {LiveDisplay.MAX_CHILD_ROWS + 1} ended" in listing
    assert listing.count("<tr>") == LiveDisplay.MAX_CHILD_ROWS
    assert ">1.1-1<" in listing and ">1.1-1/2.1-1<" in listing  # the running ones stay


# -- stopping a tree --------------------------------------------------------------------------


def tree_model(ready: Path):
    """A tree of four runs whose leaves block: root → [MIDDLE → LEAF-c, LEAF-b].

    Each leaf touches ``ready/<its name>`` and then sleeps for a minute, so a test knows when
    every run of the tree is inside a running cell.
    """

    def reply(messages: list[dict]) -> str:
        question = next(_text(m) for m in messages if m["role"] == "user")
        for leaf in ("LEAF-b", "LEAF-c"):
            if leaf in question:
                flag = str(ready / leaf)
                return (
                    f"```repl\nimport pathlib, time\npathlib.Path({flag!r}).touch()\n"
                    "time.sleep(60)\n```"
                )
        if "MIDDLE" in question:
            return "```repl\nrlm_query('LEAF-c')\n```"
        return "```repl\nrlm_query_batched(['MIDDLE-a', 'LEAF-b'])\n```"

    return reply


def _text(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content)


def tree_notebooks(root: Path) -> list[Path]:
    return [root, *sorted(root.with_name(f"{root.stem}.children").rglob("*.ipynb"))]


def every_run_blocks(root: Path, ready: Path) -> bool:
    return len(tree_notebooks(root)) == 4 and {p.name for p in ready.iterdir()} == {
        "LEAF-b",
        "LEAF-c",
    }


def descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (Linux ``/proc``)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for path in glob.glob(f"/proc/{todo.pop()}/task/*/children"):
            try:
                kids = {int(p) for p in Path(path).read_text().split()}
            except OSError:
                continue
            todo.extend(kids - found)
            found |= kids
    return found


def identity(pid: int) -> str | None:
    """A process's start time (so a reused PID is another process), ``None`` if it has ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in "ZX" else fields[19]  # a zombie has ended too


def still_running(processes: dict[int, str | None]) -> set[int]:
    return {pid for pid, ident in processes.items() if ident and identity(pid) == ident}


def leftovers(tmp: Path) -> set[str]:
    found = set(glob.glob(os.path.join(tmp, "rlm-*")))
    return found | set(glob.glob(os.path.join(jupyter_runtime_dir(), "kernel-*.json")))


def assert_every_notebook_interrupted(root: Path) -> None:
    paths = tree_notebooks(root)
    assert len(paths) == 4
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.rlm.status == "interrupted", path


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Temp and runtime folders of this test's own, so other processes' kernels do not count."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    return tmp


def tree_rlm(tmp_path: Path, **kwargs) -> tuple[RLM, Path, Path]:
    ready = tmp_path / "ready"
    ready.mkdir()
    model = tree_model(ready)
    rlm = RLM(model, model, max_depth=3, cell_timeout=300, display=False, **kwargs)
    return rlm, tmp_path / "out" / "root.ipynb", ready


async def until(condition, what: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.slow
@needs_proc
def test_cancelling_arun_ends_the_whole_tree(tmp_path, private_tmp):
    rlm, root, ready = tree_rlm(tmp_path)
    before = {pid: identity(pid) for pid in descendants(os.getpid())}
    kernels: dict[int, str | None] = {}

    async def go() -> None:
        task = asyncio.ensure_future(rlm.arun("q", "ctx", notebook=root))
        await until(lambda: every_run_blocks(root, ready) or task.done(), "every run to block")
        assert not task.done()
        kernels.update({p: identity(p) for p in descendants(os.getpid()) if p not in before})
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # arun returns only when every run of the tree has ended: nothing is left running.
        assert_every_notebook_interrupted(root)
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []

    asyncio.run(go())
    assert len(kernels) >= 4  # the four runs' kernels (and maybe warm ones)
    assert still_running(kernels) == set()
    assert_every_notebook_interrupted(root)
    assert leftovers(private_tmp) == set()


@pytest.mark.slow
@needs_proc
def test_the_stop_button_ends_the_whole_tree_and_lists_it(tmp_path, private_tmp):
    live = LiveDisplay(tmp_path / "out" / "root.ipynb", max_steps=3)
    rlm, root, ready = tree_rlm(tmp_path, **live.hooks())
    before = set(descendants(os.getpid()))
    kernels: dict[int, str | None] = {}

    async def stop_when_blocked(run: asyncio.Future) -> None:
        await until(lambda: every_run_blocks(root, ready) or run.done(), "every run to block")
        kernels.update({p: identity(p) for p in descendants(os.getpid()) - before})
        live.stop_button.click()

    async def go() -> RunResult:
        run = asyncio.ensure_future(live.run(rlm.arun("q", "ctx", notebook=root)))
        await asyncio.gather(run, stop_when_blocked(run))
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        return run.result()

    outcome = asyncio.run(go())
    assert (outcome.status, outcome.stop_reason) == ("interrupted", "interrupted")
    assert_every_notebook_interrupted(root)
    assert [(c.label, c.depth, c.state) for c in live.tree.ordered()] == [
        ("1.1-1", 2, "interrupted"),
        ("1.1-1/1.1-1", 3, "interrupted"),
        ("1.1-2", 2, "interrupted"),
    ]
    assert "child runs: 0 running · 3 ended" in live.children_list.value
    assert "RLM interrupted" in live.header.value
    assert len(kernels) >= 4 and still_running(kernels) == set()
    assert leftovers(private_tmp) == set()


@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_command_line_ends_the_whole_tree(tmp_path, fake_model_server, signum):
    ready = tmp_path / "ready"
    ready.mkdir()
    fake_model_server.add_model("tree", tree_model(ready))
    context = tmp_path / "ctx.txt"
    context.write_text("some text\n")
    root = tmp_path / "out" / "root.ipynb"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    runtime = tmp_path / "jupyter-runtime"
    env = {**os.environ, "TMPDIR": str(tmp), "JUPYTER_RUNTIME_DIR": str(runtime)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlm_kernel", "run", "--question", "q", "--context", str(context),
         "--model", "anthropic:tree", "--sub-model", "anthropic:tree", "--max-depth", "3",
         "--cell-timeout", "300", "--out", str(root)],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        asyncio.run(until(lambda: every_run_blocks(root, ready), "every run to block"))
        kernels = {pid: identity(pid) for pid in descendants(proc.pid)}
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    # The terminal progress shows the tree, nested.
    assert "  [1.1-1] started: MIDDLE-a" in err and "    [1.1-1/1.1-1] started: LEAF-c" in err
    assert_every_notebook_interrupted(root)
    assert len(kernels) >= 4 and still_running(kernels) == set()
    assert list(tmp.iterdir()) == [] and not list(runtime.glob("kernel-*.json"))
