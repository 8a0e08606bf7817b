"""The kernel-side runtime: context loading, the installed functions, and a real kernel."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import types

import pytest

from rlm_kernel import runtime
from rlm_kernel.bridge import BridgeServer


class RecordingTransport:
    """A transport that answers every prompt with its upper-case form and records requests."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []

    def request(self, op: str, payload: dict) -> dict:
        self.requests.append((op, payload))
        if op == "final":
            return {"ok": True}
        return {"results": [{"ok": p.upper()} for p in payload["prompts"]]}


@pytest.fixture
def ns():
    namespace: dict = {}
    transport = RecordingTransport()
    runtime.install(namespace, transport)
    namespace["_transport"] = transport
    return namespace


# --------------------------------------------------------------------------- load_context


def test_load_context_text_keeps_non_ascii(tmp_path):
    path = tmp_path / "c.txt"
    text = "naïve café — 東京\nline two\n"
    path.write_text(text, encoding="utf-8")
    assert runtime.load_context(str(path), "text") == text


def test_load_context_json_list_and_dict(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(["a", {"b": "ü"}]), encoding="utf-8")
    assert runtime.load_context(str(path), "json") == ["a", {"b": "ü"}]
    path.write_text(json.dumps({"doc1.txt": "x"}), encoding="utf-8")
    assert runtime.load_context(str(path), "json") == {"doc1.txt": "x"}


def test_load_context_empty_file_and_bad_kind(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    assert runtime.load_context(str(path)) == ""
    with pytest.raises(ValueError, match="'text' or 'json'"):
        runtime.load_context(str(path), "yaml")
    with pytest.raises(FileNotFoundError):
        runtime.load_context(str(tmp_path / "missing.txt"))


def test_install_loads_context_from_path(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("haystack", encoding="utf-8")
    namespace: dict = {}
    runtime.install(namespace, None, context_path=str(path))
    assert namespace["context"] == "haystack"
    assert namespace["answer"] == {"content": None, "ready": False}


# --------------------------------------------------------------------------- installed functions


def test_llm_query_and_batched_send_one_request_each(ns):
    assert ns["llm_query"]("hi", model="m") == "HI"
    assert ns["llm_query_batched"](["a", "b", "c"]) == ["A", "B", "C"]
    assert ns["llm_query_batched"]([]) == []
    assert ns["_transport"].requests == [
        ("subcall", {"kind": "llm", "prompts": ["hi"], "model": "m"}),
        ("subcall", {"kind": "llm", "prompts": ["a", "b", "c"], "model": None}),
    ]


def test_rlm_query_is_a_plain_subcall_with_context_appended(ns):
    assert ns["rlm_query"]("q") == "Q"
    assert ns["rlm_query"]("q", context="ctx") == "Q\n\nCTX"
    assert ns["_transport"].requests[-1][1]["kind"] == "rlm"
    assert "recursion is not available" in ns["rlm_query"].__doc__


def test_wrong_argument_types_are_clear(ns):
    with pytest.raises(TypeError, match="not list; for several prompts use llm_query_batched"):
        ns["llm_query"](["a"])
    with pytest.raises(TypeError, match="for one prompt use llm_query"):
        ns["llm_query_batched"]("abc")
    with pytest.raises(TypeError, match="prompt #1 is a int"):
        ns["llm_query_batched"](["a", 2])
    with pytest.raises(TypeError, match="model must be a str or None"):
        ns["llm_query"]("a", model=3)
    assert ns["_transport"].requests == []


def test_host_errors_for_a_whole_request_raise(ns):
    def failing(op: str, payload: dict) -> dict:
        return {"error": "sub-call budget exhausted", "type": "BudgetExceeded"}

    ns["_transport"].request = failing
    # install() bound the transport object; replacing its method reroutes the calls.
    with pytest.raises(runtime.BudgetExceeded, match="sub-call budget exhausted"):
        ns["llm_query"]("x")
    with pytest.raises(runtime.BudgetExceeded):
        ns["FINAL"]("x")


def test_final_var_rules(ns):
    ns["total"] = 12
    ns["FINAL_VAR"]("total")
    ns["FINAL_VAR"]("  total ")
    ns["FINAL_VAR"]("12 apples")
    ns["FINAL_VAR"](["x"])
    ns["FINAL_VAR"]("class")  # a keyword is no variable name: it is the answer itself
    with pytest.raises(NameError, match="no variable named 'totl'; did you mean total"):
        ns["FINAL_VAR"]("totl")
    with pytest.raises(NameError, match="assign it first"):
        ns["FINAL_VAR"]("zzzzzz")
    finals = [p for op, p in ns["_transport"].requests if op == "final"]
    assert finals == [
        {"value": "12", "via": "FINAL_VAR"},
        {"value": "12", "via": "FINAL_VAR"},
        {"value": "12 apples", "via": "FINAL_VAR"},
        {"value": "['x']", "via": "FINAL_VAR"},
        {"value": "class", "via": "FINAL_VAR"},
    ]


def test_without_a_host_subcalls_fail_and_final_prints(capsys):
    namespace: dict = {}
    runtime.install(namespace, None)
    with pytest.raises(runtime.BridgeError, match="not connected"):
        namespace["llm_query"]("x")
    namespace["FINAL"]("forty-two")
    assert "forty-two" in capsys.readouterr().out


def test_answer_dict_is_sent_once_per_value_even_when_rebound(ns):
    from IPython.core.events import EventManager, available_events

    shell = types.SimpleNamespace()
    shell.events = EventManager(shell, available_events)
    runtime.install(ns, ns["_transport"], shell=shell)
    runtime.install(ns, ns["_transport"], shell=shell)  # reinstalling replaces the hook
    assert len(shell.events.callbacks["post_run_cell"]) == 1
    shell.events.trigger("post_run_cell", None)
    ns["answer"] = {"content": 7, "ready": True}
    shell.events.trigger("post_run_cell", None)
    shell.events.trigger("post_run_cell", None)
    ns["answer"]["content"] = 8
    shell.events.trigger("post_run_cell", None)
    finals = [p for op, p in ns["_transport"].requests if op == "final"]
    assert finals == [{"value": "7", "via": "answer"}, {"value": "8", "via": "answer"}]


def test_show_vars_lists_only_user_variables(ns, capsys):
    ns.update(
        context="0123456789",
        numbers=[1, 2, 3],
        blob=b"xy",
        json=json,  # a module
        _private=1,
        In=[],
        Out={},
        get_ipython=lambda: None,
    )

    def helper():
        pass

    ns["helper"] = helper
    ns["SHOW_VARS"]()
    assert capsys.readouterr().out == textwrap.dedent(
        """\
        name     type      size
        answer   dict      2 items
        blob     bytes     2 bytes
        context  str       10 chars
        helper   function
        numbers  list      3 items
        """
    )


def test_every_function_has_a_docstring(ns):
    for name in ("llm_query", "llm_query_batched", "rlm_query", "FINAL", "FINAL_VAR", "SHOW_VARS"):
        doc = ns[name].__doc__
        assert doc and doc.strip().split("\n")[0].endswith("."), name


# --------------------------------------------------------------------------- isolation


def test_runtime_loads_in_isolated_python_with_the_package_blocked(tmp_path):
    ctx = tmp_path / "c.json"
    ctx.write_text('{"k": [1, 2]}', encoding="utf-8")
    script = textwrap.dedent(
        """
        import importlib.abc, importlib.util, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "rlm_kernel" or name.startswith("rlm_kernel."):
                    raise ImportError("blocked " + name)
                return None

        sys.meta_path.insert(0, Block())
        spec = importlib.util.spec_from_file_location("rlm_kernel_runtime", sys.argv[1])
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        ns = {}
        module.install(ns, None, context_path=sys.argv[2], context_kind="json")
        print(sorted(k for k in ns if not k.startswith("_")))
        print(ns["context"])
        print(sorted(n for n in sys.modules if n.startswith("rlm_kernel")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", script, runtime.__file__, str(ctx)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "['BudgetExceeded', 'FINAL', 'FINAL_VAR', 'ReplayMiss', 'SHOW_VARS', 'SubcallError', "
        "'answer', 'context', 'llm_query', 'llm_query_batched', 'rlm_query']",
        "{'k': [1, 2]}",
        "['rlm_kernel_runtime']",
    ]


def test_bootstrap_code_is_short_and_embeds_literals():
    code = runtime.bootstrap_code(
        "/opt/x/runtime.py",
        address="unix:/tmp/a b.sock",
        token="t'ok",
        context_path=None,
        context_kind="json",
    )
    compile(code, "<bootstrap>", "exec")
    assert len(code.splitlines()) <= 12
    assert repr("t'ok") in code and repr("unix:/tmp/a b.sock") in code
    assert "context_path=None, context_kind='json'" in code


# --------------------------------------------------------------------------- a real kernel


class KernelHandler:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.finals: list[tuple[str, str]] = []

        self.blocked = asyncio.Event()
        self.cancelled = False

    async def subcall(self, prompt: str, *, model: str | None, kind: str) -> str:
        if prompt == "block":
            self.blocked.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        self.calls.append((prompt, kind))
        return f"sub-model read {len(prompt)} chars"

    async def final(self, value: str, *, via: str) -> None:
        self.finals.append((value, via))


async def _execute(kc, code: str, **kwargs) -> tuple[str, str, list[str]]:
    chunks: list[str] = []
    errors: list[str] = []

    def hook(msg: dict) -> None:
        content = msg["content"]
        if msg["msg_type"] == "stream":
            chunks.append(content["text"])
        elif msg["msg_type"] == "error":
            errors.append(f"{content['ename']}: {content['evalue']}")

    reply = await kc.execute_interactive(code, output_hook=hook, timeout=60, **kwargs)
    return reply["content"]["status"], "".join(chunks), errors


async def _drive_kernel(tmp_path, sock_path: str) -> KernelHandler:
    from jupyter_client.manager import AsyncKernelManager

    ctx = tmp_path / "context.txt"
    ctx.write_text("needle é " * 1000, encoding="utf-8")
    handler = KernelHandler()
    async with BridgeServer(handler, unix_path=sock_path) as server:
        km = AsyncKernelManager(
            kernel_name="python3",
            transport="ipc",
            connection_file=str(tmp_path / "kernel.json"),
        )
        await km.start_kernel(cwd=str(tmp_path))
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            code = runtime.bootstrap_code(
                runtime.__file__,
                address=server.address,
                token=server.token,
                context_path=str(ctx),
                context_kind="text",
            )
            assert await _execute(kc, code, silent=True, store_history=False) == ("ok", "", [])
            status, out, errs = await _execute(
                kc, "print(type(context).__name__, len(context))\nprint(llm_query(context[:9]))"
            )
            assert (status, errs) == ("ok", [])
            assert out == "str 9000\nsub-model read 9 chars\n"
            status, out, errs = await _execute(kc, "print(rlm_query('count', context=context[:5]))")
            assert out == "sub-model read 12 chars\n"
            status, _, errs = await _execute(kc, "FINAL_VAR('anser')")
            assert status == "error"
            assert errs == ["NameError: FINAL_VAR: no variable named 'anser'; did you mean answer?"]
            # A cell timeout interrupts the kernel mid-call: the host's work is cancelled and
            # the next call goes over a new connection.
            cell = asyncio.ensure_future(_execute(kc, "llm_query('block')"))
            await asyncio.wait_for(handler.blocked.wait(), 30)
            await km.interrupt_kernel()
            status, _, errs = await cell
            assert (status, errs) == ("error", ["KeyboardInterrupt: "])
            for _ in range(100):
                if handler.cancelled:
                    break
                await asyncio.sleep(0.05)
            assert handler.cancelled
            assert (await _execute(kc, "print(llm_query('again'))"))[
                1
            ] == "sub-model read 5 chars\n"
            await _execute(kc, "FINAL('done')")
            await _execute(kc, "answer['content'] = 'from the dict'\nanswer['ready'] = True")
            await _execute(kc, "x = 1")  # the same ready answer is not sent twice
            half = len(server.token) // 2
            head, tail = server.token[:half], server.token[half:]
            # Split, so that this cell itself does not hold the token.
            status, out, _ = await _execute(kc, f"print(any({head!r} + {tail!r} in c for c in In))")
            assert out == "False\n"  # the token never entered the history
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)
    return handler


def test_real_kernel_runs_bootstrap_subcalls_and_finals(tmp_path):
    with tempfile.TemporaryDirectory(prefix="rlmk") as short:
        handler = asyncio.run(_drive_kernel(tmp_path, os.path.join(short, "b.sock")))
    assert handler.calls == [("needle é ", "llm"), ("count\n\nneedl", "rlm"), ("again", "llm")]
    assert handler.finals == [("done", "FINAL"), ("from the dict", "answer")]
