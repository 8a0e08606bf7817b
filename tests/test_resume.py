"""Resume and fork: replay the steps before K, then continue with another model."""

from __future__ import annotations

import json

import nbformat
import pytest

from rlm_kernel import RLM, UsageError

PARENT_REPLIES = [
    "Ask the sub-model.\n```repl\na = llm_query('first')\nprint(a)\n```",
    "```repl\nb = a + '!'\nprint(b)\n```",
    "FINAL_VAR(b)",
]


def script(replies):
    calls = []

    def model(messages):
        calls.append(messages)
        return replies[len(calls) - 1]

    model.calls = calls
    return model


def echo(messages):
    return "echo:" + messages[-1]["content"]


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parent")
    path = folder / "parent.ipynb"
    result = RLM(script(PARENT_REPLIES), echo).run("What is b?", "some context", notebook=path)
    assert result.answer == "echo:first!"
    return path


def cells_of(nb, step):
    return [c for c in nb.cells if c.metadata.get("rlm", {}).get("step") == step]


def test_resume_from_step_2_with_another_model(parent, tmp_path):
    new_root = script(["```repl\nb = a.upper()\n```\nFINAL_VAR(b)"])

    def sub_must_not_be_called(messages):
        raise AssertionError("step 1's sub-call must be answered from the record")

    out = tmp_path / "fork.ipynb"
    result = RLM(new_root, sub_must_not_be_called).resume(parent, from_step=2, out=out)
    assert (result.status, result.answer) == ("answered", "ECHO:FIRST")

    old, new = nbformat.read(parent, as_version=4), nbformat.read(out, as_version=4)
    nbformat.validate(new)
    assert [c.source for c in cells_of(new, 1)] == [c.source for c in cells_of(old, 1)]
    assert [c.get("outputs") for c in cells_of(new, 1)] == [
        c.get("outputs") for c in cells_of(old, 1)
    ]
    assert [c.metadata for c in cells_of(new, 1)] == [c.metadata for c in cells_of(old, 1)]
    assert cells_of(new, 2)[1].source == "b = a.upper()"
    parent_meta = new.metadata.rlm.parent
    assert parent_meta.run_id == old.metadata.rlm.run_id and parent_meta.step == 2
    assert (out.parent / parent_meta.notebook).resolve() == parent.resolve()

    # The new root model saw the parent's conversation up to the fork.
    (messages,) = new_root.calls
    assert messages[2] == {"role": "assistant", "content": PARENT_REPLIES[0]}
    assert "echo:first" in messages[3]["content"] and messages[3]["role"] == "user"


def test_resume_from_step_1_is_a_fresh_run_of_the_same_question(parent, tmp_path):
    out = tmp_path / "again.ipynb"
    result = RLM(script(["FINAL(fresh)"]), echo).resume(parent, from_step=1, out=out)
    assert result.answer == "fresh"
    new = nbformat.read(out, as_version=4)
    assert new.metadata.rlm.question == "What is b?"
    assert new.metadata.rlm.context.sha256 == nbformat.read(parent, 4).metadata.rlm.context.sha256


def test_bad_step_and_altered_context_are_usage_errors(parent, tmp_path):
    with pytest.raises(UsageError, match="between 1 and 3"):
        RLM(echo, echo).resume(parent, from_step=9, out=tmp_path / "x.ipynb")
    copy = tmp_path / "moved.ipynb"
    copy.write_text(parent.read_text())
    with pytest.raises(UsageError, match="missing"):
        RLM(echo, echo).resume(copy, from_step=2, out=tmp_path / "y.ipynb")


def test_a_diverging_replay_stops_with_a_clear_error(parent, tmp_path):
    nb = json.loads(parent.read_text())
    for cell in nb["cells"]:
        if cell.get("metadata", {}).get("rlm", {}).get("step") == 1 and cell["cell_type"] == "code":
            cell["source"] = "raise ValueError('not what was recorded')"
    edited = parent.with_name("edited.ipynb")
    edited.write_text(json.dumps(nb))
    result = RLM(echo, echo).resume(edited, from_step=2, out=tmp_path / "z.ipynb")
    assert result.status == "error" and "cannot be rebuilt" in result.error


@pytest.mark.slow
def test_cli_resume_through_the_sdk_then_replay(fake_model_server, tmp_path):
    from rlm_kernel.cli import main
    from rlm_kernel.testing import ScriptedModel

    context = tmp_path / "ctx.txt"
    context.write_text("alpha beta gamma\n")
    fake_model_server.add_model("root-a", ScriptedModel(PARENT_REPLIES))
    fake_model_server.add_model("sub", echo)
    parent = tmp_path / "parent.ipynb"
    base = ["--model", "anthropic:root-a", "--sub-model", "anthropic:sub", "--json"]
    assert (
        main(["run", "--question", "q", "--context", str(context), "--out", str(parent), *base])
        == 0
    )

    fake_model_server.add_model("root-b", ScriptedModel(["```repl\nb = a * 2\n```\nFINAL_VAR(b)"]))
    fork = tmp_path / "fork.ipynb"
    argv = ["resume", str(parent), "--from-step", "2", "--model", "anthropic:root-b"]
    assert main([*argv, "--out", str(fork), "--json"]) == 0
    nb = nbformat.read(fork, as_version=4)
    assert nb.metadata.rlm.answer == "echo:firstecho:first"
    assert nb.metadata.rlm.models.sub == "anthropic:sub"  # the parent's, by default
    sub_calls = [r for r in fake_model_server.requests if r.model == "sub"]
    assert len(sub_calls) == 1  # the parent's only: the fork replayed it from the record

    assert main(["replay", str(fork), "--json"]) == 0  # the fork replays without any model
