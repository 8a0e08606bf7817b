"""Host tools: functions on the host called from the kernel's code, recorded and replayed.

The runs here go through the real Anthropic SDK to the package's fake model server, with a
scripted root model, and run their code in real kernels.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from pathlib import Path

import nbformat
import pytest

from rlm_kernel import RLM, runtime
from rlm_kernel._tools_kernel import install as install_tools
from rlm_kernel.cli import main
from rlm_kernel.errors import ToolError, UsageError
from rlm_kernel.llm.anthropic import AnthropicLLM
from rlm_kernel.record import RecordedCall, ReplayBook, prompt_sha256, read
from rlm_kernel.replay import ReplayTransport
from rlm_kernel.testing import ScriptedModel
from rlm_kernel.tools import ToolBox, load_tool, request_text
from rlm_kernel.verify import replay_notebook

ROOT, SUB = "root-model", "sub-model"
CONTEXT = "alpha beta gamma\n"

CALLS: list[tuple[str, int]] = []
_LOCK = threading.Lock()


def search(query: str, k: int = 2) -> list:
    """Find the documents that mention ``query``; at most ``k`` of them."""
    with _LOCK:
        CALLS.append((query, k))
    if query == "missing":
        raise ValueError(f"no index named {query!r}")
    return [f"{query}-doc-{i}" for i in range(k)]


async def shout(text: str) -> str:
    """Upper-case ``text`` (an async tool)."""
    await asyncio.sleep(0)
    return text.upper()


def opaque() -> object:
    """Return something that is not JSON."""
    return object()


STEP_1 = """Let me use the tools.
```repl
hits = search("alpha", k=1)
print("hits", hits)
try:
    search("missing")
except ToolError as e:
    print("caught", e.tool, e.type, e.message)
try:
    opaque()
except ToolError as e:
    print("opaque", e.type)
loud = shout("quiet")
print(loud)
```"""
STEP_2 = """```repl
result = f"{hits[0]} {loud}"
print(result)
```
FINAL_VAR(result)"""


def anthropic(name: str) -> AnthropicLLM:
    return AnthropicLLM(name, stream=False)


def cells(path: Path) -> list:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return [c for c in nb.cells if "rlm-code" in c.metadata.get("tags", [])]


@pytest.fixture(scope="module")
def tool_run(tmp_path_factory):
    """One recorded run whose first step calls three tools (one fails, one returns no JSON)."""
    from rlm_kernel.testing import FakeModelServer

    base = tmp_path_factory.mktemp("tools")
    with FakeModelServer() as server, server.environment():
        root = ScriptedModel([STEP_1, STEP_2])
        server.add_model(ROOT, root)
        server.add_model(SUB, lambda messages: "unused")
        CALLS.clear()
        rlm = RLM(anthropic(ROOT), anthropic(SUB), tools=[search, shout, opaque], max_depth=1)
        result = rlm.run("What does the search find?", CONTEXT, notebook=base / "run.ipynb")
        calls = list(CALLS)
    return {"result": result, "path": base / "run.ipynb", "calls": calls, "root": root}


def test_a_tool_call_reaches_the_host_function_and_its_result_comes_back(tool_run):
    result = tool_run["result"]
    assert result.status == "answered", result.error
    assert result.answer == "alpha-doc-0 QUIET"
    assert tool_run["calls"] == [("alpha", 1), ("missing", 2)]
    # Tools are no model calls: counted apart from sub-calls.
    assert result.tool_calls == 4
    assert result.subcalls == 0
    assert result.to_dict()["tool_calls"] == 4


def test_each_call_is_recorded_on_its_cell_with_arguments_and_result(tool_run):
    first = cells(tool_run["path"])[0]
    subs = first.metadata.rlm.subcalls
    assert [(s.kind, s.model) for s in subs] == [
        ("tool", "search"),
        ("tool", "search"),
        ("tool", "opaque"),
        ("tool", "shout"),
    ]
    ok = subs[0]
    assert json.loads(ok.response) == ["alpha-doc-0"]
    assert json.loads(ok.prompt_preview) == {
        "tool": "search",
        "args": ["alpha"],
        "kwargs": {"k": 1},
    }
    assert ok.error is None
    assert ok.usage["input_tokens"] == 0 and ok.cost_usd is None


def test_an_exception_in_a_tool_is_catchable_in_the_kernel_and_recorded(tool_run):
    first = cells(tool_run["path"])[0]
    printed = "".join(o.get("text", "") for o in first.outputs)
    assert "caught search ValueError no index named 'missing'" in printed
    failed = first.metadata.rlm.subcalls[1]
    assert failed.response is None
    assert failed.error == {
        "type": "ToolError",
        "message": "no index named 'missing'",
        "retries": 0,
        "cause": "ValueError",
    }


def test_a_result_that_is_not_json_is_a_tool_error_saying_so(tool_run):
    first = cells(tool_run["path"])[0]
    printed = "".join(o.get("text", "") for o in first.outputs)
    assert "opaque TypeError" in printed
    error = first.metadata.rlm.subcalls[2].error
    assert error["type"] == "ToolError" and "not JSON" in error["message"]


def test_the_prompt_lists_each_tool_with_its_signature_and_docstring(tool_run):
    system = tool_run["root"].calls[0][0]["content"]
    assert "`search(query: str, k: int = 2) -> list`" in system
    assert "Find the documents that mention ``query``" in system
    assert "`shout(text: str) -> str`" in system
    assert "ToolError" in system
    run = read(tool_run["path"]).run
    assert [t["name"] for t in run.extra["tools"]] == ["search", "shout", "opaque"]
    assert run.extra["tool_calls"] == 4


def test_replay_answers_tool_calls_from_the_record_without_the_host(tool_run):
    CALLS.clear()
    report = replay_notebook(tool_run["path"])
    assert report.own_status == "reproduced", [c.result for c in report.cells]
    assert report.answer == "alpha-doc-0 QUIET"
    assert CALLS == []  # the host function was not called


def test_a_fork_answers_recorded_calls_from_the_book_and_calls_live_after(
    tool_run, fake_model_server, tmp_path
):
    after = """```repl
again = search("beta", k=1)
print(again)
```
FINAL_VAR(again)"""
    fake_model_server.add_model(ROOT, ScriptedModel([after]))
    fake_model_server.add_model(SUB, lambda messages: "unused")
    CALLS.clear()
    rlm = RLM(anthropic(ROOT), anthropic(SUB), tools=[search, shout, opaque], max_depth=1)
    result = rlm.resume(tool_run["path"], 2, out=tmp_path / "fork.ipynb")
    assert result.status == "answered", result.error
    assert result.answer == "['beta-doc-0']"
    # Step 1's calls came from the record; only the fork's own step called the host.
    assert CALLS == [("beta", 1)]
    assert result.tool_calls == 1


def test_child_runs_get_the_same_tools(fake_model_server, tmp_path):
    parent = """```repl
found = rlm_query("Use the search tool.", context="beta")
print(found)
```
FINAL_VAR(found)"""
    child = """```repl
print(search(context, k=1)[0])
FINAL(search(context, k=1)[0])
```"""
    fake_model_server.add_model(ROOT, ScriptedModel([parent]))
    fake_model_server.add_model("child-model", ScriptedModel([child]))
    fake_model_server.add_model(SUB, lambda messages: "unused")
    CALLS.clear()
    rlm = RLM(
        anthropic(ROOT),
        anthropic(SUB),
        child_model=anthropic("child-model"),
        tools={"search": search},
        max_depth=2,
        warm_kernels=1,
    )
    result = rlm.run("Find beta.", CONTEXT, notebook=tmp_path / "tree.ipynb")
    assert result.status == "answered", result.error
    assert result.answer == "beta-doc-0"
    assert CALLS == [("beta", 1), ("beta", 1)]
    (child_path,) = (tmp_path / "tree.children").glob("*.ipynb")
    assert [s.kind for s in cells(child_path)[0].metadata.rlm.subcalls] == ["tool", "tool"]


# --------------------------------------------------------------------------- the command line


TOOL_MODULE = '''
def lookup(key: str) -> dict:
    """Look ``key`` up in the host's table."""
    return {"key": key, "value": len(key)}
'''


def test_the_cli_takes_tools_as_module_function(fake_model_server, tmp_path, monkeypatch, capsys):
    (tmp_path / "hosttools_cli.py").write_text(TOOL_MODULE)
    monkeypatch.chdir(tmp_path)
    script = """```repl
row = lookup("abc")
print(row)
FINAL(row["value"])
```"""
    fake_model_server.add_model(ROOT, ScriptedModel([script]))
    fake_model_server.add_model(SUB, lambda messages: "unused")
    (tmp_path / "ctx.txt").write_text(CONTEXT)
    code = main(
        [
            "run",
            "--question", "How long is abc?",
            "--context", "ctx.txt",
            "--model", f"anthropic:{ROOT}",
            "--sub-model", f"anthropic:{SUB}",
            "--tool", "hosttools_cli:lookup",
            "--max-depth", "1",
            "--out", "run.ipynb",
            "--json",
        ]
    )  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["answer"] == "3" and out["tool_calls"] == 1
    sub = cells(tmp_path / "run.ipynb")[0].metadata.rlm.subcalls[0]
    assert sub.kind == "tool" and json.loads(sub.response) == {"key": "abc", "value": 3}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
        ("json:no_such_function", "json has no attribute 'no_such_function'"),
        ("json", "--tool takes MODULE:FUNCTION"),
    ],
)
def test_a_bad_tool_option_is_one_line_and_exit_2(spec, message, tmp_path, capsys):
    (tmp_path / "ctx.txt").write_text(CONTEXT)
    code = main(["run", "--question", "q", "--context", str(tmp_path / "ctx.txt"), "--tool", spec])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


# --------------------------------------------------------------------------- the pieces


def test_tool_names_are_checked_when_the_rlm_is_made():
    with pytest.raises(UsageError, match="the kernel uses that name"):
        RLM(lambda m: "x", tools={"llm_query": search})
    with pytest.raises(UsageError, match="identifier"):
        RLM(lambda m: "x", tools={"not a name": search})
    with pytest.raises(UsageError, match="not a function"):
        RLM(lambda m: "x", tools={"x": 3})
    with pytest.raises(UsageError, match="two tools are named"):
        RLM(lambda m: "x", tools=[search, search])


def test_load_tool_imports_a_function():
    assert load_tool("json:dumps") is json.dumps


def test_the_tool_box_checks_arguments_and_bounds_time():
    stop = asyncio.Event()

    async def stuck() -> None:
        await stop.wait()

    box = ToolBox({"stuck": stuck, "search": search}, timeout=0.05)

    async def main_() -> None:
        with pytest.raises(ToolError, match=r"longer than 0\.05 s") as info:
            await box.call("stuck", [], {})
        assert info.value.cause == "TimeoutError"
        with pytest.raises(ToolError, match="unexpected keyword") as info:
            await box.call("search", ["a"], {"nope": 1})
        assert info.value.cause == "TypeError"
        with pytest.raises(ToolError, match="no host tool named 'other'"):
            await box.call("other", [], {})

    asyncio.run(main_())
    box.close()


def test_kernel_functions_check_json_arguments_and_replay_from_a_book():
    text = request_text("search", ["a"], {"k": 1})
    book = ReplayBook(
        [RecordedCall(step=1, block=1, prompt_sha256=prompt_sha256(text), response='["a-0"]')]
    )
    namespace: dict = {}
    runtime.install(namespace, ReplayTransport(book))
    install_tools(namespace, ToolBox([search]).specs())
    tool = namespace["search"]
    assert str(inspect.signature(tool)) == "(query: str, k: int = 2) -> list"
    with pytest.raises(TypeError, match="JSON values"):
        tool({1, 2})
    with pytest.raises(TypeError):
        tool("a", 1, 2)  # more arguments than the signature takes, refused in the kernel
    assert tool("a", k=1) == ["a-0"]
    with pytest.raises(runtime.ReplayMiss):
        tool("a", k=1)  # the one recorded call is used up
