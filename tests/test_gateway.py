"""Kernels on a real Jupyter Kernel Gateway (127.0.0.1, with a token): sessions and whole runs."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import time
from pathlib import Path

import nbformat
import pytest
import scenarios
from gateway_server import MISSING, installed, kernel_gateway

from rlm_kernel import runtime, upload
from rlm_kernel.bridge import BridgeServer
from rlm_kernel.gateway import Gateway, GatewayAuthError
from rlm_kernel.llm.anthropic import AnthropicLLM
from rlm_kernel.run import RLM
from rlm_kernel.testing import ScriptedModel

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not installed(), reason=MISSING)]

ROOT, SUB = "root-model", "sub-model"


@pytest.fixture(scope="module")
def kg():
    with kernel_gateway() as running:
        yield running


@pytest.fixture
def gateway(kg):
    yield Gateway(kg.url, token=kg.token)
    assert kg.kernels() == []  # every test leaves the gateway empty


def run_async(test):
    """Run an async test body in its own event loop."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return wrapper


class Host:
    """A bridge handler that answers sub-calls by rule and keeps what it was asked."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.finals: list[str] = []

    async def subcall(self, request) -> str:
        self.prompts.append(request.prompt)
        return request.prompt.upper()

    async def final(self, value: str, *, via: str, cell: str | None = None) -> None:
        self.finals.append(value)


def text_of(result) -> str:
    return "".join(o.get("text", "") for o in result.outputs if o["output_type"] == "stream")


@run_async
async def test_wrong_token_is_refused_in_one_line(kg):
    wrong = Gateway(kg.url, token="not-the-token")
    with pytest.raises(GatewayAuthError) as caught:
        await wrong.check()
    assert "refused the token (HTTP 401)" in str(caught.value)
    assert "\n" not in str(caught.value) and "not-the-token" not in str(caught.value)
    with pytest.raises(GatewayAuthError):
        async with wrong(setup_code="x = 1"):
            pass
    assert kg.kernels() == []


@run_async
async def test_context_is_uploaded_checked_and_mapped_and_subcalls_use_tcp(gateway, tmp_path):
    text = "".join(f"line {i}: ünïcode ✓\n" for i in range(300_000))  # about 7 MB
    path = tmp_path / "context.txt"
    path.write_text(text, encoding="utf-8")
    host = Host()
    async with BridgeServer(host, host=gateway.bridge_host) as bridge:
        assert bridge.address.startswith("tcp:127.0.0.1:")
        session = gateway.bootstrap(
            address=bridge.address, token=bridge.token, context_path=path, context_kind="text"
        )
        async with session as ks:
            probe = (
                "import hashlib, sys, os\n"
                "print(hashlib.sha256(context.encode()).hexdigest())\n"
                "module = sys.modules['rlm_kernel_runtime']\n"
                "print(os.path.abspath(module.__file__))\n"
                "print(os.getcwd())\n"
                "print(llm_query('shout this'))\n"
            )
            result = await ks.execute(probe, timeout=30)
            assert result.status == "ok", result.outputs
            digest, runtime_file, cwd, answer = text_of(result).splitlines()
            remote_dir = ks.remote_dir
        assert digest == hashlib.sha256(text.encode()).hexdigest()
        assert session.uploads["context"]["sha256"] == digest
        assert session.uploads["context"]["bytes"] == path.stat().st_size
        # The kernel read its own copies, in its private directory, not the host's files.
        assert runtime_file == f"{remote_dir}/{upload.FILES_DIR}/rlm_runtime.py"
        assert runtime_file != runtime.__file__ and cwd == remote_dir
        assert session.uploads["context"]["path"].startswith(remote_dir)
        assert answer == "SHOUT THIS" and host.prompts == ["shout this"]
    assert not os.path.exists(remote_dir)  # removed when the kernel exited


@run_async
async def test_timeout_interrupts_and_keeps_variables(gateway):
    async with gateway(setup_code="x = 41") as ks:
        result = await ks.execute("import time\nwhile True:\n    time.sleep(0.05)", timeout=1)
        assert result.status == "timeout" and not result.restarted
        assert "interrupted" in result.error[1]
        after = await ks.execute("print(x + 1)", timeout=10)
        assert text_of(after) == "42\n"


@run_async
async def test_dead_kernel_is_replaced_with_files_and_setup_again(gateway, tmp_path):
    path = tmp_path / "ctx.txt"
    path.write_text("the context", encoding="utf-8")
    async with BridgeServer(Host(), host=gateway.bridge_host) as bridge:
        session = gateway.bootstrap(address=bridge.address, token=bridge.token, context_path=path)
        async with session as ks:
            first = ks.kernel_id
            await ks.execute("y = 1", timeout=10)
            died = await ks.execute("import os, signal; os.kill(os.getpid(), 9)", timeout=60)
            assert died.status == "kernel_died" and died.restarted
            assert ks.kernel_id != first
            assert first not in [k["id"] for k in await gateway.list_kernels()]
            after = await ks.execute("print(context); print('y' in globals())", timeout=10)
            assert text_of(after) == "the context\nFalse\n"


@run_async
async def test_cancelled_run_leaves_no_kernel(gateway, kg):
    started = asyncio.Event()

    async def run() -> None:
        async with gateway(setup_code="import time") as ks:
            started.set()
            await ks.execute("time.sleep(600)", timeout=None)

    task = asyncio.ensure_future(run())
    await asyncio.wait_for(started.wait(), 60)
    deadline = time.monotonic() + 30
    while [k["execution_state"] for k in kg.kernels()] != ["busy"]:
        assert time.monotonic() < deadline, kg.kernels()
        await asyncio.sleep(0.05)
    task.cancel()  # what Ctrl-C does to a run
    with pytest.raises(asyncio.CancelledError):
        await task
    assert kg.kernels() == []


def test_a_file_that_arrives_altered_is_refused(tmp_path):
    """The kernel's receiver compares size and SHA-256 and drops a file that does not match."""

    class Comm:
        def __init__(self) -> None:
            self.sent: list[dict] = []

        def send(self, data: dict) -> None:
            self.sent.append(data)

    comm = Comm()
    receiver = upload._Receiver(comm, str(tmp_path), {"name": "context"})
    receiver.on_msg({"content": {"data": {"seq": 1}}, "buffers": [b"hello"]})
    wrong = hashlib.sha256(b"hellO").hexdigest()
    receiver.on_msg({"content": {"data": {"end": True, "size": 5, "sha256": wrong}}})
    assert comm.sent[0] == {"ack": 1}
    assert comm.sent[1]["done"] and not comm.sent[1]["ok"]
    assert not (tmp_path / "context").exists()
    bad = upload._Receiver(comm, str(tmp_path), {"name": "../escape"})
    assert bad.file is None and "plain file name" in comm.sent[-1]["error"]


# -- whole runs through the gateway -------------------------------------------------------------


@pytest.fixture
def remote_runs(gateway):
    """``RLM(session=gateway)``: the run core listens on TCP and uploads the files."""
    return gateway


def play(server, scenario, factory, tmp_path: Path):
    server.add_model(ROOT, ScriptedModel(scenario.root))
    server.add_model(SUB, scenario.sub or (lambda messages: "unused"))
    context = scenario.make_context(tmp_path)
    limits = {}
    for flag, value in zip(scenario.cli_args[::2], scenario.cli_args[1::2], strict=False):
        limits[flag.lstrip("-").replace("-", "_")] = float(value)
    if "max_output_chars" in limits:
        limits["max_output_chars"] = int(limits["max_output_chars"])
    rlm = RLM(AnthropicLLM(ROOT), AnthropicLLM(SUB), session=factory, display=False, **limits)
    out = tmp_path / "run.ipynb"
    result = rlm.run(scenario.question, context, notebook=out)
    nb = nbformat.read(out, as_version=4)
    nbformat.validate(nb)
    return result, nb


@pytest.mark.parametrize("name", [s.name for s in scenarios.ALL])
def test_scripted_runs_answer_through_the_gateway(fake_model_server, remote_runs, tmp_path, name):
    scenario = scenarios.by_name(name)
    result, nb = play(fake_model_server, scenario, remote_runs, tmp_path)
    assert result.status == "answered", result.error
    assert result.answer == scenario.expected(tmp_path)
    assert nb.metadata.rlm["status"] == "answered"


def test_kernel_death_in_a_run_is_reported_and_the_context_is_back(
    fake_model_server, remote_runs, tmp_path
):
    died = scenarios.Scenario(
        name="died",
        question="How long is the context?",
        make_context=lambda d: scenarios._write(d / "c.txt", "abcdef"),
        root=[
            "```repl\nz = 1\nimport os\nos.kill(os.getpid(), 9)\n```",
            "```repl\nprint(len(context), 'z' in globals())\nn = len(context)\n```\nFINAL_VAR(n)",
        ],
        expected=lambda d: "6",
    )
    result, nb = play(fake_model_server, died, remote_runs, tmp_path)
    assert result.answer == "6"
    cells = [c for c in nb.cells if "rlm-code" in c.metadata.get("tags", [])]
    assert cells[0].metadata.rlm["exec"]["status"] == "kernel_died"
    assert "6 False" in cells[1].outputs[0]["text"]


def test_batch_with_a_wrong_gateway_token_exits_2_in_one_line(kg, tmp_path):
    import subprocess
    import sys

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"id": 1, "question": "q", "context": "c.txt"}\n')
    env = {**os.environ, "JUPYTER_GATEWAY_AUTH_TOKEN": "wrong"}
    command = [sys.executable, "-m", "rlm_kernel", "batch", str(tasks), "--gateway", kg.url]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "refused the token" in proc.stderr, proc.stderr
    assert "wrong" not in proc.stderr
