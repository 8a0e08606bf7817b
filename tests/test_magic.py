"""``%%rlm`` in a real kernel: options, the stored result, and the live widget's Stop button."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import start_new_kernel
from nbrun import execute_notebook

from rlm_kernel.magic import await_rlm_cells, parse_rlm_line

SETUP = """
%load_ext rlm_kernel
tickets = "alpha\\nbeta\\ngamma"

def root(messages):
    if len(messages) == 2:
        return "```repl\\nn = len(context.splitlines())\\nprint(n)\\n```"
    return "FINAL(3 lines)"

def sub(messages):
    return "unused"
"""


def execute(folder: Path, *cells: str, allow_errors: bool = False) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    return execute_notebook(nb, folder, allow_errors=allow_errors)


def stdout(cell) -> str:
    return "".join(o.text for o in cell.outputs if o.get("name") == "stdout")


# -- the option line, without a kernel ------------------------------------------------------------


def test_the_option_line_is_parsed():
    args = parse_rlm_line(
        "--context tickets --context 'my file.txt' --model root --max-steps 3 --max-cost 0.5 "
        "--cell-timeout 2 --timeout 60 --max-output-chars 900 --approve --as res"
    )
    assert args.context == ["tickets", "my file.txt"]
    assert (args.model, args.max_steps, args.max_cost_usd, args.name) == ("root", 3, 0.5, "res")
    assert (args.cell_timeout, args.timeout, args.max_output_chars) == (2.0, 60.0, 900)
    assert args.approve is True


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--model x", "give the input with --context"),
        ("--context c --max-steps many", "invalid int value: 'many'"),
        ("--context c --bogus 1", "unrecognized arguments: --bogus 1"),
        ("--context c --as 'not a name'", "--as needs a Python name"),
        ("--context 'unbalanced", "No closing quotation"),
    ],
)
def test_bad_option_lines_are_refused_in_one_line(line, message):
    with pytest.raises(ValueError, match=message) as failure:
        parse_rlm_line(line)
    assert "\n" not in str(failure.value)


def test_only_rlm_cells_are_rewritten_as_awaited_calls():
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.instance()  # the rewriting asks the shell whether it awaits top-level code
    cell = ["\n", "%%rlm --context c --as r\n", "How many 'lines'?\n"]
    (line,) = await_rlm_cells(cell)
    assert line.startswith("await get_ipython().magics_manager.registry['RLMMagics'].arlm(")
    call = ast.parse(line).body[0].value.value
    assert [ast.literal_eval(a) for a in call.args] == ["--context c --as r", "How many 'lines'?\n"]
    for other in (["%%rlmx\n", "q\n"], ["x = 1\n"], ["%%time\n", "%%rlm\n"], []):
        assert await_rlm_cells(other) == other


# -- in a real kernel -----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_cell_is_the_question_and_the_result_is_kept(tmp_path):
    nb = execute(
        tmp_path,
        SETUP,
        "%%rlm --context tickets --model root --sub-model sub --out runs/r.ipynb --as res\n"
        "How many lines are there?",
        "print(res.answer, res.status, _rlm is res, res.notebook.endswith('runs/r.ipynb'))",
    )
    assert "answered · 2 steps · 0 sub-calls" in stdout(nb.cells[1])
    assert stdout(nb.cells[1]).rstrip().endswith("3 lines")
    assert stdout(nb.cells[2]) == "3 lines answered True True\n"
    run = nbformat.read(tmp_path / "runs" / "r.ipynb", as_version=4)
    assert run.metadata.rlm.question == "How many lines are there?"
    assert run.metadata.rlm.status == "answered"
    # The live widget was shown in the cell: a widget view next to the printed summary.
    views = [o for o in nb.cells[1].outputs if o.output_type == "display_data"]
    assert any("application/vnd.jupyter.widget-view+json" in o.data for o in views)


BOTH_ROLES = """
def both(messages):
    if messages[0]["role"] != "system":
        return "a sub-call's answer"
    return "```repl\\nprint(llm_query('hi'))\\n```" if len(messages) == 2 else "FINAL(done)"
"""


@pytest.mark.slow
def test_a_context_file_and_a_bad_option_in_the_kernel(tmp_path):
    (tmp_path / "notes.txt").write_text("one\ntwo\nthree\n")
    nb = execute(
        tmp_path,
        SETUP + BOTH_ROLES,
        "%%rlm --context notes.txt --model root --sub-model sub --no-display\nHow many lines?",
        "%%rlm --context nowhere --model root\nq",
        "%%rlm --context tickets --max-steps zero\nq",
        "%%rlm --help",
        "%%rlm --context tickets --model both --no-display --out one.ipynb\nq",
        allow_errors=True,
    )
    assert stdout(nb.cells[1]).rstrip().endswith("3 lines")
    assert not [o for o in nb.cells[1].outputs if o.output_type == "display_data"]
    for cell, message in [
        (nb.cells[2], "--context nowhere: no variable or file of that name"),
        (nb.cells[3], "argument --max-steps: invalid int value: 'zero' (see %%rlm --help)"),
    ]:
        # IPython shows a UsageError as one line on stderr, without a traceback.
        (error,) = [o.text for o in cell.outputs if o.get("name") == "stderr"]
        assert error.startswith("UsageError: %%rlm: ") and message in error
        assert error.count("\n") == 1

    # --help prints every option with its default, and runs nothing.
    helped = " ".join(stdout(nb.cells[4]).split())
    assert helped.startswith("usage: %%rlm")
    assert "--max-steps N root-model turns" in helped and "(default: 30)" in helped
    assert "--max-tokens" in helped and "--here" in helped
    assert [o.output_type for o in nb.cells[4].outputs] == ["stream"]

    # --model alone: the sub-model is the same model; counts of one are singular.
    assert "answered · 2 steps · 1 sub-call · " in stdout(nb.cells[5])
    run = nbformat.read(tmp_path / "one.ipynb", as_version=4)
    assert run.metadata.rlm.models == {"root": "function:both", "sub": "function:both"}


# -- Stop, clicked through the widget's comm ----------------------------------------------------


SLOW_SETUP = """
%load_ext rlm_kernel
text = "some text"
def root(messages):
    return "```repl\\nimport time\\nprint('started', flush=True)\\ntime.sleep(60)\\n```"
"""


def _wait_for_stop_button(kc, deadline: float) -> str:
    """The comm id of the live display's Stop button, once the run is in its first block."""
    stop_id = None
    started = False
    while time.monotonic() < deadline and not (stop_id and started):
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except Exception:
            continue
        content = msg["content"]
        if msg["msg_type"] == "comm_open":
            state = content["data"].get("state", {})
            if state.get("_model_name") == "ButtonModel" and state.get("description") == "Stop":
                stop_id = content["comm_id"]
        elif msg["msg_type"] == "comm_msg" and content["comm_id"] != stop_id:
            # The code pane shows the block before it runs; the sub-kernel then sleeps.
            value = content["data"].get("state", {}).get("value", "")
            started = started or "time.sleep(60)" in value
    assert stop_id and started, "the live display never showed the running block"
    return stop_id


@pytest.mark.slow
def test_the_stop_button_ends_the_run_interrupted(tmp_path):
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        reply = kc.execute_interactive(SLOW_SETUP, timeout=60)
        assert reply["content"]["status"] == "ok"
        began = time.monotonic()
        msg_id = kc.execute(
            "%%rlm --context text --model root --sub-model root --out s.ipynb --as res\nq"
        )
        stop_id = _wait_for_stop_button(kc, began + 30)
        click = kc.session.msg(
            "comm_msg",
            {"comm_id": stop_id, "data": {"method": "custom", "content": {"event": "click"}}},
        )
        kc.shell_channel.send(click)
        while True:
            reply = kc.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        assert reply["content"]["status"] == "ok"
        assert time.monotonic() - began < 30  # not the 60 s the block sleeps
        meta = json.loads((tmp_path / "s.ipynb").read_text())["metadata"]["rlm"]
        assert (meta["status"], meta["stop_reason"]) == ("interrupted", "interrupted")
        check = kc.execute_interactive(
            "print(res.status, _rlm is res)", timeout=30, output_hook=_collect(out := [])
        )
        assert check["content"]["status"] == "ok"
        assert "".join(out) == "interrupted True\n"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _collect(into: list[str]):
    def hook(msg):
        if msg["msg_type"] == "stream":
            into.append(msg["content"]["text"])

    return hook


HERE_SETUP = """
%load_ext rlm_kernel
import os
ctx = "one two three"

def root(messages):
    if len(messages) == 2:
        return (
            "```repl\\nmade_here = len(context.split())\\nreply = llm_query('hi')\\n"
            "print(reply)\\nmade_here\\n```"
        )
    if len(messages) == 4:
        return "```repl\\nwhile True:\\n    pass\\n```"
    return "FINAL_VAR(made_here)"

def sub(messages):
    return "sub says " + messages[-1]["content"]
"""


def test_here_runs_the_code_in_this_kernel_and_leaves_its_variables(tmp_path):
    nb = execute(
        tmp_path,
        HERE_SETUP,
        "%%rlm --here --model root --sub-model sub --context ctx --cell-timeout 2 "
        "--out here.ipynb --as res\nHow many words?",
        "print(made_here + 1, reply, res.status, res.answer)",
    )
    assert stdout(nb.cells[2]).strip() == "4 sub says hi answered 3"
    run = nbformat.read(tmp_path / "here.ipynb", as_version=4)
    nbformat.validate(run)
    cells = [c for c in run.cells if "rlm-code" in c.metadata.get("tags", [])]
    first, endless = cells[0], cells[1]
    assert "sub says hi" in first.outputs[0].text
    assert first.outputs[-1].data["text/plain"] == "3"  # the value of the last expression
    assert first.metadata.rlm.subcalls[0].response == "sub says hi"
    assert endless.metadata.rlm.exec.status == "timeout"  # interrupted, and the kernel lives on
    assert endless.outputs[-1].ename == "KeyboardInterrupt"
    assert run.metadata.rlm.status == "answered"


KEEP_SETUP = """
%load_ext rlm_kernel
ctx = "one two three"
context, answer, FINAL = "mine", 42, "my final"

def root(messages):
    if len(messages) == 2:
        return "```repl\\nwords = len(context.split())\\nkeep = llm_query\\nprint(keep('hi'))\\n```"
    return "FINAL_VAR(words)"

def sub(messages):
    return "sub says hi"
"""

LEFTOVERS = """
print(context, answer, FINAL, words)
for call in (lambda: keep("again"), lambda: llm_query("again"), lambda: FINAL_VAR("words")):
    try:
        call()
    except Exception as e:
        print(type(e).__name__, "|", e)
"""


def test_here_puts_back_the_users_names_and_ended_functions_say_so(tmp_path):
    nb = execute(
        tmp_path,
        KEEP_SETUP,
        "%%rlm --here --model root --sub-model sub --context ctx --out keep.ipynb --as res\n"
        "How many words?",
        "print(res.status, res.answer)",
        LEFTOVERS,
    )
    assert stdout(nb.cells[2]).strip() == "answered 3"
    lines = stdout(nb.cells[3]).strip().splitlines()
    # The user's context, answer and FINAL are theirs again; the model's own variables stay.
    assert lines[0] == "mine 42 my final 3"
    for line, caller in zip(lines[1:], ("llm_query", "llm_query", "FINAL_VAR"), strict=True):
        name, message = line.split(" | ")
        assert name == "RunEnded", line
        assert message.startswith(f"{caller}: this run has ended"), line
    assert len(lines) == 4 and "Broken pipe" not in stdout(nb.cells[3])
    run = nbformat.read(tmp_path / "keep.ipynb", as_version=4)
    assert run.metadata.rlm.status == "answered"
