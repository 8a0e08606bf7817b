"""The loop's judgement calls, with plain-function models: what is accepted, what is shown."""

from __future__ import annotations

import nbformat

from rlm_kernel import RLM, Completion


def script(*replies):
    calls = []

    def model(messages):
        calls.append(messages)
        reply = replies[len(calls) - 1]
        return reply(messages) if callable(reply) else reply

    model.calls = calls
    return model


def test_a_final_written_next_to_failing_code_is_not_accepted(tmp_path):
    root = script("```repl\nx = 1 / 0\n```\nFINAL(42)", "```repl\nx = 7\n```\nFINAL_VAR(x)")
    result = RLM(root, script()).run("q", "ctx", notebook=tmp_path / "r.ipynb")
    assert (result.answer, result.steps) == ("7", 2)
    shown = root.calls[1][-1]["content"]
    assert "ZeroDivisionError" in shown and "was not accepted" in shown


def test_blocks_of_one_reply_share_the_output_budget(tmp_path):
    blocks = "".join(f"```repl\nprint('{n}' * 5000)\n```\n" for n in range(4))
    root = script(blocks, "FINAL(done)")
    RLM(root, script(), max_output_chars=4000).run("q", "ctx", notebook=tmp_path / "r.ipynb")
    nb = nbformat.read(tmp_path / "r.ipynb", as_version=4)
    shown = [
        c.metadata.rlm.exec.shown for c in nb.cells if "rlm-code" in c.metadata.get("tags", [])
    ]
    assert len(shown) == 4 and all(len(s) < 1000 + 200 for s in shown)
    assert len(root.calls[1][-1]["content"]) < 4000 + 1000


def test_empty_and_cut_off_replies_are_handled(tmp_path):
    def cut(messages):
        return Completion("```repl\nprint(1", model="m", stop_reason="max_tokens")

    root = script("", cut, "FINAL(ok)")
    result = RLM(root, script()).run("q", "ctx", notebook=tmp_path / "r.ipynb")
    assert result.answer == "ok"
    assert root.calls[1][2] == {"role": "assistant", "content": "(empty reply)"}
    assert "cut off at the output-token limit" in root.calls[2][-1]["content"]


def test_a_human_in_the_loop_can_edit_skip_and_stop(tmp_path):
    root = script(
        "```repl\nx = 1\n```\n```repl\nprint('skip me')\n```",
        "```repl\nprint(x)\n```",
        "```repl\nprint('never')\n```",
    )
    decisions = iter(["x = 41", None, "print(x + 1)", False])

    def approve(*, step, block, code):
        return next(decisions)

    result = RLM(root, script(), approve=approve).run("q", "ctx", notebook=tmp_path / "h.ipynb")
    assert (result.status, result.stop_reason) == ("interrupted", "stopped")
    nb = nbformat.read(tmp_path / "h.ipynb", as_version=4)
    nbformat.validate(nb)
    cells = [c for c in nb.cells if "rlm-code" in c.metadata.get("tags", [])]
    assert cells[0].source == "x = 41"
    assert cells[0].metadata.rlm.approval == {"decision": "edited", "original": "x = 1"}
    assert cells[1].metadata.rlm.exec.status == "skipped" and cells[1].outputs == []
    assert cells[2].outputs[0].text == "42\n"  # the edited block ran as edited
    assert nb.metadata.rlm.status == "interrupted"


def test_refused_subcalls_are_recorded_and_replay_the_same(tmp_path):
    from rlm_kernel.verify import replay_notebook

    code = (
        "```repl\ntry:\n    llm_query_batched(['a', 'b', 'c'])\n"
        "except BudgetExceeded as e:\n    print('refused:', e)\n```\nFINAL(done)"
    )
    out = tmp_path / "b.ipynb"
    result = RLM(script(code), lambda m: "x", max_subcalls=2).run("q", "ctx", notebook=out)
    assert result.subcalls == 2
    nb = nbformat.read(out, as_version=4)
    (cell,) = [c for c in nb.cells if "rlm-code" in c.metadata.get("tags", [])]
    errors = [s.error for s in cell.metadata.rlm.subcalls]
    assert errors[:2] == [None, None] and errors[2]["type"] == "BudgetExceeded"
    assert errors[2]["message"].startswith("sub-call budget exhausted")
    assert "refused:" in cell.outputs[0].text
    assert replay_notebook(out).status == "reproduced"


def test_a_thread_calls_for_the_cell_it_was_started_in_not_the_one_running(tmp_path):
    code = (
        "```repl\nimport threading\ngo = threading.Event()\n"
        "def late():\n    go.wait(30)\n    llm_query('from the thread')\n"
        "t = threading.Thread(target=late)\nt.start()\n```\n"
        "```repl\ngo.set()\nt.join(30)\nx = llm_query('from the second cell')\n```\n"
        "FINAL(done)"
    )
    out = tmp_path / "t.ipynb"
    result = RLM(script(code), lambda m: "ok").run("q", "ctx", notebook=out)
    assert result.answer == "done"
    first, second = [
        c
        for c in nbformat.read(out, as_version=4).cells
        if "rlm-code" in c.metadata.get("tags", [])
    ]
    # The thread started in the first cell called while the second ran: the call is the first's.
    assert [s.prompt_preview for s in first.metadata.rlm.subcalls] == ["from the thread"]
    assert first.metadata.rlm.subcalls[0].cell == "step-1-code-1"
    assert "after its cell had finished" in first.metadata.rlm.subcalls[0].note
    assert [s.prompt_preview for s in second.metadata.rlm.subcalls] == ["from the second cell"]
