"""The live display and the humans in the loop, driven through their widgets and prompts."""

from __future__ import annotations

import asyncio
import io
import shlex
import shutil
import sys
import threading
import time
from pathlib import Path

import nbclient
import nbformat
import pytest

from rlm_kernel import RLM, Usage
from rlm_kernel.live import LiveDisplay, TerminalApprover, WidgetApprover, attach
from rlm_kernel.record import SubcallRecord


def script(*replies):
    calls = []

    def model(messages):
        calls.append(messages)
        return replies[min(len(calls), len(replies)) - 1]

    model.calls = calls
    return model


def code_cells(path: Path) -> list:
    nb = nbformat.read(path, as_version=4)
    return [c for c in nb.cells if "rlm-code" in c.metadata.get("tags", [])]


# -- LiveDisplay ----------------------------------------------------------------------------------


def test_the_hooks_show_step_code_output_subcalls_tokens_and_the_notebook(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    live = LiveDisplay(tmp_path / "runs" / "r.ipynb", max_steps=5, question="How many?")
    usage = {"root": Usage(calls=1, input_tokens=1000, output_tokens=234), "sub": Usage()}
    live.on_step(
        step=2, max_steps=5, text="Look:\n```repl\nprint(len(context))\n```", blocks=1,
        usage=usage, subcalls=0, cost_usd=0.5, elapsed_s=1.0,
    )  # fmt: skip
    live.on_output(step=2, block=1, status="error", shown="x" * 5000)
    record = SubcallRecord(
        id=1, kind="llm", model="m", prompt_sha256="", prompt_chars=3, prompt_preview="<b>hi"
    )
    record.response, record.cost_usd = "yes", 0.25
    live.on_subcall(record=record)
    header = live.header.value
    assert "step 2 of 5" in header and "1,234 tokens" in header and "1 sub-call ·" in header
    assert "$0.7500" in header
    assert "<a href='runs/r.ipynb' target='_blank'>runs/r.ipynb</a>" in header
    assert "print(len(context))" in live.code.value and "Look:" not in live.code.value
    assert "block 2.1: error" in live.output.value and "3,000 more characters" in live.output.value
    assert "&lt;b&gt;hi → yes" in live.subcall_line.value  # model text is escaped


@pytest.mark.slow
def test_stop_ends_a_running_block_and_the_run_is_interrupted(tmp_path):
    """Stop clicked from another thread while the kernel runs a long block."""
    out = tmp_path / "s.ipynb"
    live = LiveDisplay(out, max_steps=3)
    clicker = threading.Timer(1.0, live.stop_button.click)

    def on_step(**kwargs):
        live.on_step(**kwargs)
        clicker.start()

    root = script("```repl\nimport time\ntime.sleep(30)\n```")
    rlm = RLM(root, script("x"), on_step=on_step, on_output=live.on_output, display=False)
    began = time.monotonic()
    result = asyncio.run(live.run(rlm.arun("q", "ctx", notebook=out)))
    assert time.monotonic() - began < 20
    assert (result.status, result.stop_reason, result.steps) == ("interrupted", "interrupted", 1)
    meta = nbformat.read(out, as_version=4).metadata.rlm
    assert meta.status == "interrupted"
    assert "RLM interrupted" in live.header.value and live.stop_button.disabled


def test_outside_jupyter_nothing_is_shown_unless_asked(tmp_path):
    hooks = {"on_step": None, "on_output": None, "on_subcall": None}
    common = {"hooks": hooks, "notebook": tmp_path / "r.ipynb", "max_steps": 3, "question": "q"}
    assert attach(display=None, approve=None, **common) == (hooks, None, None)
    merged, _, live = attach(display=True, approve=None, **common)
    assert isinstance(live, LiveDisplay) and not live.stoppable  # no kernel: no clicks
    assert merged["on_step"] == live.on_step


def test_a_forced_display_keeps_the_callers_hooks(tmp_path):
    seen = []
    root = script("```repl\nprint(6 * 7)\n```", "FINAL(42)")
    result = RLM(root, script("x"), on_output=lambda **kw: seen.append(kw["shown"]), display=True)
    result = result.run("q", "ctx", notebook=tmp_path / "r.ipynb")
    assert result.answer == "42" and seen == ["42\n"]


@pytest.mark.slow
def test_a_blocking_run_in_jupyter_updates_the_widget_from_its_thread(tmp_path):
    """``rlm.run`` in a kernel runs on a background thread; the widget state still follows."""
    setup = (
        "from rlm_kernel import RLM\n"
        "def root(messages):\n"
        "    return '```repl\\nprint(1)\\n```' if len(messages) == 2 else 'FINAL(done)'\n"
        "result = RLM(root, root).run('q', 'ctx', notebook='b.ipynb')\n"
        "print(result.status)"
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(setup)])
    nbclient.NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    assert "".join(o.get("text", "") for o in nb.cells[0].outputs) == "answered\n"
    states = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"].values()
    values = [s["state"].get("value", "") for s in states]
    (header,) = [v for v in values if "<b>RLM" in v]
    assert "RLM answered" in header and "step 2 of 30" in header
    assert any("to stop, interrupt the kernel" in v for v in values)
    (stop,) = [s["state"] for s in states if s["state"].get("description") == "Stop"]
    assert stop["disabled"] is True


# -- the terminal approver ------------------------------------------------------------------------


@pytest.fixture
def editor(tmp_path):
    """An $EDITOR that rewrites the file it is given (as a person would, but scripted)."""
    path = tmp_path / "fake-editor"
    path.write_text("#!/bin/sh\nprintf 'x = 41\\n' > \"$1\"\n")
    path.chmod(0o755)
    return str(path)


def test_the_terminal_approver_runs_skips_edits_and_stops(tmp_path, editor, monkeypatch):
    monkeypatch.setenv("EDITOR", editor)
    root = script(
        "```repl\nx = 1\n```\n```repl\nprint('skip me')\n```",
        "```repl\nprint(x + 1)\n```",
        "```repl\nprint('never')\n```",
    )
    stdin, stdout = io.StringIO("e\n?\ny\nn\nyes\ns\n"), io.StringIO()
    approver = TerminalApprover(stdin=stdin, stdout=stdout)
    out = tmp_path / "t.ipynb"
    result = RLM(root, script("x"), approve=approver).run("q", "ctx", notebook=out)
    assert (result.status, result.stop_reason) == ("interrupted", "stopped")
    cells = code_cells(out)
    assert cells[0].source == "x = 41"
    assert cells[0].metadata.rlm.approval == {"decision": "edited", "original": "x = 1"}
    assert cells[1].metadata.rlm.exec.status == "skipped"
    assert cells[2].outputs[0].text == "42\n"
    assert len(cells) == 3
    text = stdout.getvalue()
    assert text.count(TerminalApprover.PROMPT) == 6
    assert "--- step 1, block 1 ---\nx = 1\n---" in text
    assert "--- edited ---\nx = 41\n---" in text and "answer y, n, e or s" in text


def test_a_failing_editor_is_reported_and_the_prompt_comes_back(tmp_path):
    stdin, stdout = io.StringIO("e\nn\n"), io.StringIO()
    approver = TerminalApprover(stdin=stdin, stdout=stdout, editor="false")
    assert approver(step=1, block=1, code="x = 1") is None
    assert "the editor 'false' exited with status 1" in stdout.getvalue()


def test_the_end_of_input_stops_and_approve_true_asks_on_stdin(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    monkeypatch.setattr(sys, "stdout", out := io.StringIO())
    root = script("```repl\nprint('never')\n```")
    result = RLM(root, script("x"), approve=True).run("q", "ctx", notebook=tmp_path / "e.ipynb")
    assert (result.status, result.stop_reason) == ("interrupted", "stopped")
    assert "(end of input: stopping)" in out.getvalue()


# -- the widget approver --------------------------------------------------------------------------


def test_the_widget_approver_is_driven_by_its_buttons(tmp_path):
    approver = WidgetApprover()
    approver.embedded = True  # no front end here to display it in
    assert approver.run_button.disabled  # nothing to decide yet

    async def person():
        for act in ("edit", "skip", "run", "stop"):
            while approver.run_button.disabled:
                await asyncio.sleep(0.01)
            if act == "edit":
                assert approver.editor.value == "x = 1"
                approver.editor.value = "x = 41"
                approver.run_button.click()
                approver.run_button.click()  # a double click is not a second decision
            else:
                getattr(approver, f"{act}_button").click()

    root = script(
        "```repl\nx = 1\n```\n```repl\nprint('skip me')\n```",
        "```repl\nprint(x + 1)\n```",
        "```repl\nprint('never')\n```",
    )
    out = tmp_path / "w.ipynb"

    async def main():
        clicks = asyncio.ensure_future(person())
        result = await RLM(root, script("x"), approve=approver).arun("q", "c", notebook=out)
        await clicks
        return result

    result = asyncio.run(main())
    assert (result.status, result.stop_reason) == ("interrupted", "stopped")
    cells = code_cells(out)
    assert [c.source for c in cells] == ["x = 41", "print('skip me')", "print(x + 1)"]
    assert cells[1].metadata.rlm.exec.status == "skipped"
    assert cells[2].outputs[0].text == "42\n"
    assert approver.editor.disabled and "waiting for the model" in approver.label.value


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) from util-linux")
def test_in_a_terminal_a_run_prints_a_line_per_step(tmp_path):
    import subprocess
    import sys

    script = (
        "from rlm_kernel import RLM\n"
        "replies = iter(['```repl\\nx = 1\\n```', 'FINAL(1)'])\n"
        "RLM(lambda m: next(replies), lambda m: '').run('q', 'ctx', notebook='t.ipynb')\n"
    )
    # script(1) gives the child a terminal for stderr, as a person's shell would.
    proc = subprocess.run(
        ["script", "-qec", f"{sys.executable} -c {shlex.quote(script)}", "/dev/null"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "step 1/30: ran 1 code block, 0 sub-calls" in proc.stdout and "step 2/30" in proc.stdout
    assert "models: " in proc.stdout  # the run said what it uses when it started
