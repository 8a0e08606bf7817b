"""The scripted models of the overhead suite, served to both implementations by one server.

rlm-kernel and the reference implementation talk to the same
:class:`~rlm_kernel.testing.FakeModelServer` through the real ``openai`` SDK, so a figure of one
and the same figure of the other differ only by what the implementations do around the model.
The root model reads its script from a marker in the question (``bench: steps=N`` or
``bench: cell=NAME``) and the number of replies it already gave, so it answers any number of
runs of either implementation; the sub-models reply ``ok`` after a fixed latency.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from rlm_kernel.testing import FakeModelServer

ROOT = "bench-root"
X1 = "x = 1"
# Both implementations finish when the answer dict is marked ready; FINAL() is ours alone.
ANSWER = 'answer["content"] = "done"\nanswer["ready"] = True'
_MARKER = re.compile(r"bench: (steps|cell)=(\w+)")


def block(code: str) -> str:
    """A ```repl``` code block, the fence both implementations run."""
    return f"```repl\n{code}\n```"


def steps_question(n: int) -> str:
    """The question of a run whose root replies ``x = 1`` for ``n - 1`` steps, then answers."""
    return f"bench: steps={n}"


class BenchModels:
    """The root and sub-models, and the server that plays them on 127.0.0.1."""

    def __init__(self) -> None:
        self.cells: dict[str, str] = {}
        self.server = FakeModelServer({ROOT: self._root})
        self._subs: set[str] = set()

    def __enter__(self) -> BenchModels:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def cell_question(self, code: str) -> str:
        """The question of a run whose root runs ``code`` in one cell, then answers."""
        name = f"c{len(self.cells)}"
        self.cells[name] = code
        return f"bench: cell={name}"

    def sub(self, latency_s: float) -> str:
        """The name of a sub-model that replies ``ok`` after ``latency_s`` seconds."""
        name = f"bench-sub-{round(latency_s * 1000)}ms"
        if name not in self._subs:
            self.server.add_model(name, _sleeper(latency_s))
            self._subs.add(name)
        return name

    def _root(self, messages: list[dict]) -> str:
        text = "\n".join(str(m.get("content", "")) for m in messages if m["role"] != "assistant")
        found = _MARKER.search(text)
        if found is None:
            raise ValueError("a benchmark question carries a 'bench: ...' marker")
        replies = sum(m["role"] == "assistant" for m in messages)
        kind, value = found.groups()
        if kind == "steps":
            return block(X1 if replies < int(value) - 1 else ANSWER)
        return block(self.cells[value] if replies == 0 else ANSWER)


def _sleeper(latency_s: float) -> Callable[[list[dict]], str]:
    def reply(messages: list[dict]) -> str:
        if latency_s:
            time.sleep(latency_s)
        return "ok"

    return reply
