"""The scripted models of the overhead suite, served to both implementations by one server.

rlm-kernel and the reference implementation talk to the same
:class:`~rlm_kernel.testing.FakeModelServer` through the real ``openai`` SDK, so a figure of one
and the same figure of the other differ only by what the implementations do around the model.
The server runs in a process of its own, so that neither implementation shares an interpreter
lock with it. The root model reads its script from a marker in the question (``bench:
steps=N``, or ``bench: cell=HEX`` with the cell's code) and the number of replies it already
gave, so it answers any number of runs of either implementation; the sub-models reply ``ok``
after a fixed latency. ``_serve.py`` is that server process.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterable

ROOT = "bench-root"
X1 = "x = 1"
# Both implementations finish when the answer dict is marked ready; FINAL() is ours alone.
ANSWER = 'answer["content"] = "done"\nanswer["ready"] = True'
_MARKER = re.compile(r"bench: (steps|cell)=([0-9a-f]+)")
KEY_ENV = "RLM_BENCH_SERVER_KEY"


def block(code: str) -> str:
    """A ```repl``` code block, the fence both implementations run."""
    return f"```repl\n{code}\n```"


def steps_question(n: int) -> str:
    """The question of a run whose root replies ``x = 1`` for ``n - 1`` steps, then answers."""
    return f"bench: steps={n}"


def cell_question(code: str) -> str:
    """The question of a run whose root runs ``code`` in one cell, then answers."""
    return f"bench: cell={code.encode().hex()}"


def sub_name(latency_s: float) -> str:
    """The name of the sub-model that replies ``ok`` after ``latency_s`` seconds."""
    return f"bench-sub-{round(latency_s * 1000)}ms"


def root(messages: list[dict]) -> str:
    """The root model: the next reply of the script the question names."""
    text = "\n".join(str(m.get("content", "")) for m in messages if m["role"] != "assistant")
    found = _MARKER.search(text)
    if found is None:
        raise ValueError("a benchmark question carries a 'bench: ...' marker")
    replies = sum(m["role"] == "assistant" for m in messages)
    kind, value = found.groups()
    if kind == "steps":
        return block(X1 if replies < int(value) - 1 else ANSWER)
    return block(bytes.fromhex(value).decode() if replies == 0 else ANSWER)


def sleeper(latency_s: float) -> Callable[[list[dict]], str]:
    """A sub-model that replies ``ok`` after ``latency_s`` seconds."""

    def reply(messages: list[dict]) -> str:
        if latency_s:
            time.sleep(latency_s)
        return "ok"

    return reply


class BenchModels:
    """The model server process: ``with BenchModels(latencies) as models: models.base_url``.

    Args:
        latencies: the sub-models' latencies in seconds (a zero-latency one is always served).
    """

    def __init__(self, latencies: Iterable[float] = ()) -> None:
        self.latencies = sorted({0.0, *latencies})
        self.api_key = f"fake-key-{secrets.token_hex(12)}"
        self.base_url = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> BenchModels:
        # The key travels in the environment, never on a command line others can read.
        env = {**os.environ, KEY_ENV: self.api_key}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", f"{__package__}._serve", *map(str, self.latencies)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self.__exit__()
            raise RuntimeError("the benchmark's model server did not start")
        self.base_url = json.loads(line)["openai_base_url"]
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()  # the server stops at the end of its stdin
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def env(self) -> dict[str, str]:
        """The variables that point the ``openai`` SDK at the server."""
        return {"OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": self.api_key}

    def sub(self, latency_s: float) -> str:
        """The name of a served sub-model with this latency."""
        if latency_s not in self.latencies:
            raise ValueError(f"no sub-model with a latency of {latency_s} s is served")
        return sub_name(latency_s)
