"""Whole runs against a model server that fails for real, through both SDKs.

Each run goes through the public API (``RLM(...).run``) with a real kernel and the real
``anthropic`` / ``openai`` SDKs talking to the fault-injecting fake model server. A fault in a
root call ends the run with a one-line error and a valid notebook that says what happened (or,
for a fault the SDK retries past, with the answer); a fault in a sub-call reaches the model's
code as an exception with the same one line, and is recorded on the cell. Afterwards no kernel
process, socket or temporary directory is left.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from pathlib import Path

import nbformat
import pytest

from rlm_kernel import RLM
from rlm_kernel.testing import ScriptedModel

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc"),
]

PROVIDERS = ["anthropic", "openai"]
ANSWER = "```repl\nx = len(context)\nprint(x)\n```\nFINAL_VAR(x)"


def children() -> set[int]:
    pids: set[int] = set()
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        try:
            pids.update(int(p) for p in Path(path).read_text().split())
        except FileNotFoundError:  # the thread ended since the listing; it has no children
            continue
    return pids


@pytest.fixture
def clean(tmp_path, monkeypatch):
    """A private temp dir; at the end, nothing of the run may be left in it or running."""
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    before = children()
    yield
    assert children() - before == set()
    assert list(private.iterdir()) == []


def run(provider: str, tmp_path: Path, *, stream: bool, **limits):
    # Root replies stream when they may be longer than 8192 tokens (the default cap is 16000).
    limits.setdefault("max_tokens", 16_000 if stream else 4_000)
    limits.setdefault("max_steps", 3)
    rlm = RLM(f"{provider}:root", f"{provider}:sub", **limits)
    return rlm.run("How long is the context?", context="x" * 123, notebook=tmp_path / "run.ipynb")


def recorded(path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return nb


ROOT_FAULTS = [
    ("reset", 3, "was lost before the reply was complete"),
    ("malformed", 1, "the server's reply is not valid (JSONDecodeError"),
    ("cut", 3, "was lost before the reply was complete"),
    ("empty", 1, "larger than the server's context window"),
]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("fault", "times", "message"), ROOT_FAULTS, ids=[f[0] for f in ROOT_FAULTS]
)
def test_a_root_call_that_fails_ends_the_run_with_one_clear_line(
    fake_model_server, tmp_path, clean, provider, stream, fault, times, message
):
    # A fixed reply: a fault that cuts a reply still takes it from the model, retries included.
    fake_model_server.add_model("root", ANSWER)
    # Broken in transport, the step is asked for twice before the run ends with the error.
    fake_model_server.fault(fault, times=2 * times, model="root")
    result = run(provider, tmp_path, stream=stream)
    assert result.status == "error"
    assert result.error.startswith(f"{provider}:root: ") and message in result.error
    assert "the step was retried once" in result.error
    assert "\n" not in result.error
    meta = recorded(result.notebook).metadata.rlm
    assert meta.status == "error" and meta.error == result.error
    assert meta.steps == 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stream_without_a_stop_reason_is_not_taken_as_a_reply(
    fake_model_server, tmp_path, clean, provider
):
    fake_model_server.add_model("root", ScriptedModel([ANSWER, ANSWER]))
    fake_model_server.fault("no_finish", model="root", times=2)
    result = run(provider, tmp_path, stream=True)
    assert result.status == "error" and "ended without a stop reason" in result.error
    assert recorded(result.notebook).metadata.rlm.answer is None


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("status", [429, 529, 500])
def test_transient_root_errors_are_retried_and_the_run_answers(
    fake_model_server, tmp_path, clean, provider, status
):
    fake_model_server.add_model("root", ScriptedModel([ANSWER]))
    fake_model_server.fault("reset", model="root")
    fake_model_server.fail(status, model="root", retry_after=0.01)
    result = run(provider, tmp_path, stream=True)
    assert (result.status, result.answer) == ("answered", "123")
    nb = recorded(result.notebook)
    (step,) = [c for c in nb.cells if "rlm-step" in c.metadata.get("tags", [])]
    assert step.metadata.rlm.retries == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_root_server_that_never_answers_is_bounded_by_the_run_timeout(
    fake_model_server, tmp_path, clean, provider
):
    fake_model_server.add_model("root", ScriptedModel([ANSWER]))
    fake_model_server.fault("hang", model="root", times=5)
    result = run(provider, tmp_path, stream=True, timeout=3)
    assert (result.status, result.stop_reason) == ("no_answer", "timeout")
    assert recorded(result.notebook).metadata.rlm.stop_reason == "timeout"


SUB_CODE = """```repl
results = []
for name in {names!r}:
    try:
        results.append(llm_query("a question", model=f"{provider}:sub-{{name}}"))
    except Exception as e:
        results.append(f"{{type(e).__name__}}: {{e}}")
for r in results:
    print(r)
```"""

# One sub-model per fault, so that a retry meets the same fault; 3 attempts (2 retries) a call.
SUB_FAULTS = [
    ("overloaded", "fail", 529, 1, None),  # retried: answered
    ("reset", "fault", "reset", 3, "was lost before the reply was complete (after 2 retries)"),
    ("malformed", "fault", "malformed", 1, "the server's reply is not valid"),
    ("cut", "fault", "cut", 3, "was lost before the reply was complete"),
    ("empty", "fault", "empty", 1, "larger than the server's context window"),
    ("limited", "fail", 429, 3, "HTTP 429"),
    ("flaky", "fail", 500, 1, None),  # retried: answered
]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_failed_sub_calls_reach_the_code_as_clear_errors_and_are_recorded(
    fake_model_server, tmp_path, clean, provider, stream
):
    names = [f[0] for f in SUB_FAULTS]
    code = SUB_CODE.format(names=names, provider=provider)
    fake_model_server.add_model("root", ScriptedModel([code, "FINAL(done)"]))
    for name, how, what, times, _ in SUB_FAULTS:
        model = f"sub-{name}"
        fake_model_server.add_model(model, lambda messages: "sub answer")
        if how == "fail":
            fake_model_server.fail(what, times=times, model=model, retry_after=0.01)
        else:
            fake_model_server.fault(what, times=times, model=model)
    # Sub replies stream when they may be longer than 8192 tokens.
    result = run(provider, tmp_path, stream=False, sub_max_tokens=9_000 if stream else 1_000)
    assert (result.status, result.answer) == ("answered", "done")
    subs = [r for r in fake_model_server.requests if r.model.startswith("sub-")]
    assert {r.stream for r in subs} == {stream}
    nb = recorded(result.notebook)
    (cell,) = [
        c for c in nb.cells if c.cell_type == "code" and c.metadata.get("rlm", {}).get("subcalls")
    ]
    printed = "".join(o.get("text", "") for o in cell.outputs).splitlines()
    records = cell.metadata.rlm.subcalls
    assert len(printed) == len(records) == len(SUB_FAULTS)
    for line, record, (name, *_, message) in zip(printed, records, SUB_FAULTS, strict=True):
        if message is None:
            assert line == "sub answer" and record.response == "sub answer", name
            assert record.retries == 1, name
        else:
            expected = f"SubcallError: {provider}:sub-{name}: "
            assert line.startswith(expected) and message in line, (name, line)
            assert record.error.type == "SubcallError", name
            assert message in record.error.message and "\n" not in record.error.message, name
            assert record.response is None


# -- floods of refused sub-calls ------------------------------------------------------------------

IGNORES_REFUSALS = """```repl
answers = [llm_query("first"), llm_query("second")]
refused = 0
while True:
    try:
        llm_query(f"again {refused}")
    except Exception:
        refused += 1
```"""
BATCH_REFUSED = """```repl
try:
    llm_query_batched([f"p{i}" for i in range(500)])
except BudgetExceeded as e:
    print(len(e.errors), "refused")
```
FINAL(done)"""


@pytest.mark.parametrize("provider", PROVIDERS)
def test_code_that_ignores_budget_refusals_is_stopped_and_recorded_compactly(
    fake_model_server, tmp_path, clean, capsys, provider
):
    fake_model_server.add_model("root", ScriptedModel([IGNORES_REFUSALS, BATCH_REFUSED]))
    fake_model_server.add_model("sub", lambda messages: "sub answer")
    result = run(provider, tmp_path, stream=False, max_subcalls=2)
    assert (result.status, result.answer) == ("answered", "done")
    nb = recorded(result.notebook)
    loop_cell, batch_cell = [c for c in nb.cells if "rlm-code" in c.metadata.get("tags", [])]

    # The endless loop ended: the runtime stopped the cell after REFUSAL_LIMIT refusals.
    assert loop_cell.metadata.rlm.exec.status == "error"
    (error,) = [o for o in loop_cell.outputs if o.output_type == "error"]
    assert error.ename == "SubcallsRefused"
    assert "the budget refused 20 sub-calls in this cell" in error.evalue
    assert "SubcallsRefused" in loop_cell.metadata.rlm.exec.shown
    records = loop_cell.metadata.rlm.subcalls
    assert [r.response for r in records[:2]] == ["sub answer", "sub answer"]
    (refusal,) = records[2:]
    assert refusal.error.type == "BudgetExceeded" and refusal.count == 20
    assert refusal.prompt_preview == "again 0"

    # A refused batch is one record with the number of its prompts.
    assert "".join(o.get("text", "") for o in batch_cell.outputs) == "500 refused\n"
    (batch,) = batch_cell.metadata.rlm.subcalls
    assert batch.error.type == "BudgetExceeded" and batch.count == 500
    assert len(fake_model_server.requests) == 2 + 2  # two root replies, two answered sub-calls

    # The compact record replays: the same refusals, the same stop, the same answer.
    from rlm_kernel.cli import main

    capsys.readouterr()
    assert main(["replay", str(result.notebook), "--json"]) == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "reproduced"
    assert {c["result"] for c in report["cells"]} == {"same"}


def test_a_loop_that_even_catches_the_stop_ends_at_the_cell_timeout_asking_the_host_no_more(
    fake_model_server, tmp_path, clean
):
    code = (
        "```repl\nwhile True:\n    try:\n        llm_query('q')\n"
        "    except BaseException:\n        pass\n```"
    )
    fake_model_server.add_model("root", ScriptedModel([code, "FINAL(done)"]))
    fake_model_server.add_model("sub", lambda messages: "sub answer")
    result = run("anthropic", tmp_path, stream=False, max_subcalls=1, cell_timeout=2)
    assert (result.status, result.answer) == ("answered", "done")
    nb = recorded(result.notebook)
    (cell,) = [c for c in nb.cells if "rlm-code" in c.metadata.get("tags", [])]
    assert cell.metadata.rlm.exec.status == "timeout"
    answered, refusal = cell.metadata.rlm.subcalls
    assert answered.response is not None and answered.get("count", 1) == 1
    assert refusal.count == 20  # the runtime stopped asking; the rest never reached the host


# -- an empty context -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "directory of empty files"])
def test_an_empty_context_is_warned_about_in_one_line_and_noted_in_the_notebook(
    fake_model_server, tmp_path, clean, capsys, kind
):
    from rlm_kernel.cli import main

    if kind == "file":
        context = tmp_path / "empty.txt"
        context.write_bytes(b"")
    else:
        context = tmp_path / "docs"
        context.mkdir()
        (context / "a.txt").write_text("")
        (context / "b.txt").write_text("\n")
    fake_model_server.add_model("root", ScriptedModel(["FINAL(nothing)"]))
    out = tmp_path / "run.ipynb"
    argv = ["run", "--question", "q", "--context", str(context), "--out", str(out)]
    assert main([*argv, "--model", "anthropic:root", "--sub-model", "anthropic:root"]) == 0
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "warning" in line]
    assert line.startswith("rlm-kernel: warning: ") and str(context) in line
    assert "the model has nothing to read" in line
    (noted,) = recorded(out).metadata.rlm.context.warnings
    assert str(context) in noted and "nothing to read" in noted


def test_an_empty_context_warns_in_python(fake_model_server, tmp_path, clean):
    from rlm_kernel import ContextWarning

    fake_model_server.add_model("root", ScriptedModel(["FINAL(nothing)"]))
    rlm = RLM("anthropic:root", "anthropic:root")
    with pytest.warns(ContextWarning, match=r"the context is empty \(0 bytes\)"):
        result = rlm.run("q", context="", notebook=tmp_path / "run.ipynb")
    assert result.status == "answered"
