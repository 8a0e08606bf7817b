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
        pids.update(int(p) for p in Path(path).read_text().split())
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
