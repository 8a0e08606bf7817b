"""The conversation a root model gets, through ``RLM(...).run`` with plain-function models.

Every path keeps user and assistant turns alternating (an API refuses two user turns in a row),
each step's feedback keeps the question, the variables and the budgets in view, and a run that
runs out of steps, money or time still asks once for the best answer.
"""

from __future__ import annotations

import asyncio
import itertools
import re

import nbformat
import pytest

from rlm_kernel import RLM, Completion
from rlm_kernel import prompts as prompt_texts
from rlm_kernel.context import prepare
from rlm_kernel.types import Limits

QUESTION = "What is six times seven?"


def script(*replies):
    """A root model replying in order; it checks the turns of every conversation it gets."""
    calls: list[list[dict]] = []

    def model(messages):
        calls.append(messages)
        roles = [m["role"] for m in messages]
        assert roles[:2] == ["system", "user"] and roles[-1] == "user", roles
        for a, b in itertools.pairwise(roles[1:]):
            assert a != b, f"two {a} turns in a row: {roles}"
        reply = replies[len(calls) - 1]
        return reply(messages) if callable(reply) else reply

    model.calls = calls
    return model


def priced(text, usd):
    return lambda messages: Completion(text, model="priced-root", cost_usd=usd)


def code_cells(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return nb, [c for c in nb.cells if "rlm-code" in c.metadata.get("tags", [])]


def test_no_code_cut_off_and_the_step_limit_alternate(tmp_path):
    def cut(messages):
        return Completion("```repl\nprint(1", model="m", stop_reason="max_tokens")

    root = script("Let me think first.", cut, "```repl\nx = 6 * 7\nprint(x)\n```", "FINAL_VAR(x)")
    out = tmp_path / "a.ipynb"
    result = RLM(root, script(), max_steps=3).run(QUESTION, "ctx", notebook=out)
    assert (result.answer, result.status, result.stop_reason) == ("42", "answered", "max_steps")
    assert len(root.calls) == 4  # three steps, then the last call

    no_code, cut_off, last = (calls[-1]["content"] for calls in root.calls[1:])
    assert "no ```repl block and no FINAL line, so nothing ran" in no_code
    assert "cut off at the output-token limit" in cut_off
    for shown in (no_code, cut_off):
        assert f"Question: {QUESTION}" in shown and "left. Continue" in shown
    # The last step's output and the request for an answer are one user turn.
    assert last.index("Block 1 (ok") < last.index("Your variables: x.")
    assert last.index("Your variables: x.") < last.index("That was your last step")
    assert "FINAL_VAR(name) still works" in last and f"Question: {QUESTION}" in last
    assert "Spent: step 3 of 3" in last
    nb = nbformat.read(out, as_version=4)
    assert nb.metadata.rlm.system_prompt == root.calls[0][0]["content"]


def test_a_spent_cost_budget_asks_for_the_answer_in_one_turn(tmp_path):
    root = script(
        priced("```repl\ny = 1\n```", 0.3),
        priced("```repl\ny += 1\nprint(y)\n```", 0.3),
        priced("FINAL_VAR(y)", 0.3),
    )
    out = tmp_path / "b.ipynb"
    result = RLM(root, script(), max_cost_usd=0.5, max_subcalls=9).run(QUESTION, "c", notebook=out)
    assert (result.answer, result.status, result.stop_reason) == ("2", "answered", "max_cost")
    last = root.calls[-1][-1]["content"]
    assert "The run's cost budget is used up" in last and "Block 1 (ok" in last
    assert "$0.60 ($0.00 left)" in last and "0 sub-calls (9 left)" in last
    second = root.calls[1][-1]["content"]
    assert "Spent: step 1 of 30 · 0 sub-calls (9 left) · $0.30 ($0.20 left)" in second
    # Reading the variable names between steps leaves the cells' numbers as they were.
    _, cells = code_cells(out)
    counts = [c.execution_count for c in cells if "rlm-final" not in c.metadata.tags]
    assert counts == [counts[0], counts[0] + 1]


def _time_is_up(messages) -> bool:
    return "The run's time is up" in messages[-1]["content"]


def test_time_running_out_in_a_cell_still_gets_an_answer(tmp_path):
    # The limit counts from the start of the run, kernel start included, so the script waits
    # for the last call rather than counting replies.
    def root_reply(messages):
        return (
            "FINAL_VAR(z)"
            if _time_is_up(messages)
            else "```repl\nz = 5\nwhile True:\n    pass\n```"
        )

    root = script(root_reply, root_reply)
    out = tmp_path / "c.ipynb"
    result = RLM(root, script(), timeout=6).run(QUESTION, "c", notebook=out)
    assert (result.answer, result.stop_reason) == ("5", "timeout")
    last = root.calls[-1][-1]["content"]
    assert "Block 1 (timeout" in last and "The run's time is up" in last
    _, cells = code_cells(out)
    assert [c.metadata.rlm.exec.status for c in cells] == ["timeout", "ok"]  # FINAL_VAR ran


def test_a_root_call_cut_by_the_time_limit_is_followed_by_one_last_call(tmp_path):
    calls: list[list[dict]] = []

    async def root(messages):
        calls.append(messages)
        if not _time_is_up(messages):
            await asyncio.sleep(60)  # cancelled when the run's time is up
        return "FINAL(in time)"

    result = RLM(root, script(), timeout=4).run(QUESTION, "c", notebook=tmp_path / "d.ipynb")
    assert (result.answer, result.stop_reason) == ("in time", "timeout")
    (_, only_user) = calls[-1]
    assert only_user["content"].startswith(f"Question: {QUESTION}")
    assert "The run's time is up" in only_user["content"]


def test_a_resumed_run_alternates_too(tmp_path):
    first = script("Thinking.", "```repl\nw = 3\n```", "FINAL_VAR(w)")
    out = tmp_path / "e.ipynb"
    assert RLM(first, script()).run(QUESTION, "c", notebook=out).answer == "3"
    again = script("```repl\nw = 4\n```\nFINAL_VAR(w)")
    result = RLM(again, script()).resume(out, from_step=3)
    assert result.answer == "4"
    roles = [m["role"] for m in again.calls[0]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]


def test_feedback_names_the_variables_the_kernel_holds(tmp_path):
    root = script(
        "```repl\nimport re\nchunks = [context]\ndef helper():\n    pass\n```",
        "```repl\ndel chunks\nhits = 1\n```",
        "FINAL(done)",
    )
    RLM(root, script()).run(QUESTION, "c", notebook=tmp_path / "f.ipynb")
    assert "Your variables: chunks, helper." in root.calls[1][-1]["content"]  # no module, no `open`
    assert "Your variables: helper, hits." in root.calls[2][-1]["content"]


def test_a_custom_system_prompt_is_used_and_recorded(tmp_path):
    template = "House rules. {context_description}\nYou have {max_steps} replies. f'{x}'"
    root = script("FINAL(ok)")
    out = tmp_path / "g.ipynb"
    RLM(root, script(), system_prompt=template, max_steps=4).run(QUESTION, "hello", notebook=out)
    system = root.calls[0][0]["content"]
    assert system.startswith("House rules. `context` is a str of 5 characters")
    assert system.endswith("You have 4 replies. f'{x}'")
    assert nbformat.read(out, as_version=4).metadata.rlm.system_prompt == system


def test_a_bad_system_prompt_is_a_usage_error():
    from rlm_kernel.errors import UsageError

    with pytest.raises(UsageError, match="system_prompt is empty"):
        RLM(script(), script(), system_prompt=" ")


# -- the examples in the prompt run as written ---------------------------------------------------


def _example_blocks(system: str) -> list[str]:
    return re.findall(r"```repl\n(.*?)\n```", system.split("## Examples")[1], flags=re.S)


@pytest.mark.parametrize(
    "context",
    [
        "Ticket T1: I was charged twice.\nTicket T2: the app is slow.\n" * 50,
        [{"id": f"T{i}", "text": "refund please" if i % 2 else "hello"} for i in range(60)],
        {"a.md": "refund policy", "b.md": "nothing here", "c/d.md": "refund again"},
    ],
    ids=["str", "list", "dict"],
)
def test_the_examples_run_on_their_context_shape(context, tmp_path):
    info = prepare(context, tmp_path / "probe")
    system = prompt_texts.system_prompt(info, Limits(), sub_model="function:sub")
    regex, chunked = _example_blocks(system)
    root = script(f"```repl\n{regex}\n```", f"```repl\n{chunked}\n```\nFINAL_VAR(result)")
    seen = []

    def sub(messages):
        seen.append(messages[-1]["content"])
        return "T1\nT2" if "billing problem" in seen[-1] else "NONE"

    out = tmp_path / "h.ipynb"
    result = RLM(root, sub).run(QUESTION, context, notebook=out)
    assert (result.answer, result.status) == ("T1\nT2", "answered")
    assert len(seen) == 1  # a small context goes in one prompt, not one per item
    _, cells = code_cells(out)
    assert all(c.metadata.rlm.exec.status == "ok" for c in cells)


def test_the_command_line_takes_a_system_prompt_file(tmp_path, fake_model_server, capsys):
    from rlm_kernel.cli import main
    from rlm_kernel.testing import ScriptedModel

    root = ScriptedModel(["FINAL(fine)"])
    fake_model_server.add_model("root", root)
    (tmp_path / "doc.txt").write_text("some text")
    (tmp_path / "sys.md").write_text("Be brief. {context_description}", encoding="utf-8")
    argv = ["run", "--question", "q", "--context", str(tmp_path / "doc.txt")]
    argv += ["--model", "anthropic:root", "--sub-model", "anthropic:root"]
    out = tmp_path / "cli.ipynb"
    assert main([*argv, "--out", str(out), "--system-prompt", str(tmp_path / "sys.md")]) == 0
    system = nbformat.read(out, as_version=4).metadata.rlm.system_prompt
    assert system.startswith("Be brief. `context` is a str of 9 characters (about 3 tokens), read")
    capsys.readouterr()
    assert main([*argv, "--system-prompt", str(tmp_path / "missing.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot read system prompt file" in err and "\n" not in err
