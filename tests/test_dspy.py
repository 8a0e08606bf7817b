"""KernelInterpreter: DSPy's CodeInterpreter contract on a real kernel, and dspy.RLM end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nbformat
import pytest

dspy = pytest.importorskip(
    "dspy", minversion="3.4", reason="needs DSPy 3.4+: pip install 'rlm-kernel[dspy]'"
)

from dspy.primitives.code_interpreter import (  # noqa: E402
    CodeExecutionError,
    CodeInterpreter,
    CodeInterpreterError,
    FinalOutput,
)
from dspy.utils import DummyLM  # noqa: E402

from rlm_kernel.dspy import KernelInterpreter, KernelInterpreterFactory  # noqa: E402
from rlm_kernel.testing import ScriptedModel  # noqa: E402


def _cells(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    return nb, [c for c in nb.cells if c.cell_type == "code" and "rlm" in c.metadata]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One kernel for the contract points that do not end a session."""
    path = tmp_path_factory.mktemp("dspy") / "shared.ipynb"
    interp = KernelInterpreter(notebook=path, cell_timeout=2)
    interp.start()
    yield interp
    interp.shutdown()


# --------------------------------------------------------------------------- the protocol


def test_it_is_a_code_interpreter_and_the_factory_is_not(tmp_path):
    interp = KernelInterpreter(notebook=tmp_path / "a.ipynb")
    assert isinstance(interp, CodeInterpreter)
    factory = KernelInterpreter.factory(notebook=tmp_path / "a.ipynb")
    assert not isinstance(factory, CodeInterpreter)  # DSPy refuses a factory that is one
    assert factory.execution_instructions == KernelInterpreter.execution_instructions
    dspy.RLM("question -> answer", interpreter_factory=factory)  # passes DSPy's own checks
    dspy.RLM("question -> answer", interpreter_factory=KernelInterpreter)


def test_the_factory_takes_the_class_options_and_makes_fresh_numbered_instances(tmp_path):
    with pytest.raises(TypeError, match="no_such_option"):
        KernelInterpreter.factory(no_such_option=1)
    factory = KernelInterpreter.factory(notebook=tmp_path / "run.ipynb", cell_timeout=7)
    assert isinstance(factory, KernelInterpreterFactory)
    first, second = factory(), factory()
    assert first is not second and first.tools is not second.tools
    assert (first.notebook.name, second.notebook.name) == ("run.ipynb", "run-2.ipynb")
    assert first.cell_timeout == second.cell_timeout == 7
    for interp in (first, second):
        interp.shutdown()
    assert not (tmp_path / "run.ipynb").exists()  # never started: no kernel, no notebook


def test_start_is_idempotent_and_shutdown_is_final(tmp_path):
    interp = KernelInterpreter(notebook=tmp_path / "s.ipynb")
    interp.start()
    interp.start()
    assert interp.execute("x = 41\nx + 1") == "42\n"
    interp.shutdown()
    interp.shutdown()
    with pytest.raises(CodeInterpreterError, match="shut down"):
        interp.start()
    with pytest.raises(CodeInterpreterError, match="shut down"):
        interp.execute("print(1)")
    nb, _ = _cells(tmp_path / "s.ipynb")
    assert nb.metadata.rlm.status == "no_answer"


def test_a_notebook_path_that_cannot_be_written_is_a_setup_error(tmp_path):
    interp = KernelInterpreter(notebook=tmp_path / "run.txt")
    with pytest.raises(CodeInterpreterError, match=r"\.ipynb"):
        interp.execute("print(1)")
    interp.shutdown()


def test_state_persists_and_output_is_what_a_cell_shows(shared):
    assert shared.execute("counter = 1") is None
    assert shared.execute("counter += 1\nprint('counter is', counter)") == "counter is 2\n"
    assert shared.execute("counter * 10") == "20\n"


def test_variables_are_injected_fresh_before_each_execution(shared):
    given = {"data": {"items": [1, 2, 3]}}
    assert shared.execute("data['items'].append(4); print(len(data['items']))", given) == "4\n"
    # DSPy passes its inputs again each time: what the code changed is undone.
    assert shared.execute("print(len(data['items']))", given) == "3\n"
    assert given == {"data": {"items": [1, 2, 3]}}
    with pytest.raises(CodeInterpreterError, match="JSON"):
        shared.execute("pass", {"bad": object()})
    with pytest.raises(CodeInterpreterError, match="SUBMIT"):
        shared.execute("pass", {"SUBMIT": 1})


def test_tools_are_globals_with_keyword_or_positional_arguments(shared):
    seen = []

    def search(query: str, k: int = 2) -> list:
        seen.append((query, k))
        return [f"{query}-{i}" for i in range(k)]

    shared.tools["search"] = search  # added after start, as DSPy's RLM does
    assert shared.execute("print(search(query='cat', k=3))") == "['cat-0', 'cat-1', 'cat-2']\n"
    assert shared.execute("print(search('dog'))") == "['dog-0', 'dog-1']\n"
    assert seen == [("cat", 3), ("dog", 2)]


def test_a_failing_tool_is_a_catchable_error_in_the_code(shared):
    def explode(reason: str) -> str:
        raise ValueError(f"no {reason}")

    shared.tools["explode"] = explode
    code = "try:\n    explode(reason='luck')\nexcept RuntimeError as e:\n    print('caught', e)"
    assert shared.execute(code) == "caught ValueError: no luck\n"
    with pytest.raises(CodeExecutionError, match="ValueError: no luck"):
        shared.execute("explode('luck')")


def test_runtime_and_syntax_errors_are_recoverable(shared):
    with pytest.raises(CodeExecutionError, match="ZeroDivisionError") as caught:
        shared.execute("print('before')\n1 / 0")
    assert "before" in str(caught.value)  # the output up to the error is kept
    with pytest.raises(SyntaxError):
        shared.execute("def broken(:\n    pass")
    assert shared.execute("print('still here')") == "still here\n"


def test_a_cell_past_its_time_limit_is_interrupted_and_keeps_state(shared):
    shared.execute("kept = 'yes'")
    with pytest.raises(CodeExecutionError, match="interrupted"):
        shared.execute("import time\nwhile True: time.sleep(0.05)")
    assert shared.execute("print(kept)") == "yes\n"


def test_submit_is_typed_by_output_fields_and_ends_the_cell(shared):
    shared.output_fields = [{"name": "answer", "type": "str"}, {"name": "count", "type": "int"}]
    result = shared.execute("SUBMIT('forty', 2)\nprint('after')")
    assert result == FinalOutput({"answer": "forty", "count": 2})
    assert shared.execute("SUBMIT(count=3, answer='x')") == FinalOutput({"answer": "x", "count": 3})
    signature = shared.execute("import inspect; print(inspect.signature(SUBMIT))")
    assert signature == "(answer: str, count: int)\n"
    with pytest.raises(CodeExecutionError, match="count"):
        shared.execute("SUBMIT(answer='only one')")
    shared.output_fields = None
    assert shared.execute("SUBMIT(7)") == FinalOutput({"output": 7})


def test_one_interpreter_runs_one_execution_at_a_time(shared):
    shared.tools["reenter"] = lambda: shared.execute("print(1)")
    with pytest.raises(CodeExecutionError, match="already running code"):
        shared.execute("reenter()")


def test_tools_run_in_the_dspy_context_of_the_caller(shared):
    shared.tools["which_lm"] = lambda: getattr(dspy.settings.lm, "model", None)
    with dspy.context(lm=DummyLM([{"answer": "x"}])):
        assert shared.execute("print(which_lm())") == "dummy\n"


def test_a_dead_kernel_ends_the_session(tmp_path):
    interp = KernelInterpreter(notebook=tmp_path / "d.ipynb")
    try:
        interp.execute("x = 1")
        with pytest.raises(CodeInterpreterError, match=r"died|killed|exited"):
            interp.execute("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
        with pytest.raises(CodeInterpreterError, match="session is over"):
            interp.execute("print(x)")
    finally:
        interp.shutdown()
    nb, _ = _cells(tmp_path / "d.ipynb")
    assert nb.metadata.rlm.status == "error"


# --------------------------------------------------------------------------- dspy.RLM end to end


def _program(tmp_path, fake_model_server, own_factory=True):
    """A scripted dspy.RLM: DummyLM writes the code, a scripted model behind dspy.LM answers."""
    root = DummyLM(
        [
            {
                "reasoning": "First count the words and ask the sub-model about the topic.",
                "code": "```python\nwords = document.split()\nprint(len(words))\n"
                "topic = llm_query('Topic of: ' + document[:40])\nprint(topic)\n"
                "print(lookup(word=words[0]))\n```",
            },
            {
                "reasoning": "I have what I need.",
                "code": "```python\nSUBMIT(answer=topic + ' / ' + str(len(words)))\n```",
            },
        ]
    )
    fake_model_server.add_model("sub", ScriptedModel(["felines"]))
    sub = dspy.LM(
        "openai/sub",
        api_base=fake_model_server.openai_base_url,
        api_key=fake_model_server.api_key,
        cache=False,
    )

    def lookup(word: str) -> dict:
        """Look a word up in the host's dictionary."""
        return {"word": word, "length": len(word)}

    own = {
        "interpreter_factory": KernelInterpreter.factory(notebook=tmp_path / "runs" / "cats.ipynb")
    }
    program = dspy.RLM(
        "document, question -> answer",
        max_iters=4,
        sub_lm=sub,
        tools=[lookup],
        **(own if own_factory else {}),
    )
    return program, root


@pytest.mark.slow
def test_a_dspy_rlm_run_is_a_notebook_that_replays_without_a_key(tmp_path, fake_model_server):
    program, root = _program(tmp_path, fake_model_server)
    with dspy.context(lm=root):
        result = program(document="cats sleep a lot " * 50, question="What is it about?")
    assert result.answer == "felines / 200"

    path = tmp_path / "runs" / "cats.ipynb"
    nb, cells = _cells(path)
    meta = nb.metadata.rlm
    assert meta.status == "answered" and json.loads(meta.answer) == {"answer": "felines / 200"}
    assert meta.models.root == "dummy" and meta.models.sub == "openai/sub"
    assert meta.question == "dspy: document, question -> answer"
    steps = [c for c in nb.cells if "rlm-step" in c.metadata.get("tags", [])]
    assert "count the words" in steps[1].source  # the model's reasoning, as markdown
    code = next(
        c for c in cells if "llm_query(" in c.source and "rlm-dspy-setup" not in c.metadata.tags
    )
    assert "200\nfelines\n" in "".join(o.get("text", "") for o in code.outputs)
    calls = code.metadata.rlm.subcalls
    assert [(c["kind"], c["tool"]) for c in calls] == [("llm", "llm_query"), ("tool", "lookup")]
    assert calls[0]["response"] == "felines"
    assert json.loads(calls[1]["response"]) == {"word": "cats", "length": 4}
    assert (path.parent / "cats.context.json").is_file()  # the inputs, beside the notebook

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    done = subprocess.run(
        [sys.executable, "-m", "rlm_kernel", "replay", str(path), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "reproduced"
    assert report["answer"] == meta.answer
    assert all(c["result"] == "same" for c in report["cells"])


@pytest.mark.slow
def test_dspy_context_chooses_the_interpreter_for_a_program_without_one(
    tmp_path, fake_model_server
):
    program, root = _program(tmp_path, fake_model_server, own_factory=False)
    factory = KernelInterpreter.factory(notebook=tmp_path / "configured.ipynb")
    with dspy.context(lm=root, interpreter_factory=factory):
        result = program(document="dogs bark", question="What is it about?")
    assert result.answer == "felines / 2"
    nb, _ = _cells(tmp_path / "configured.ipynb")
    assert nb.metadata.rlm.status == "answered"
