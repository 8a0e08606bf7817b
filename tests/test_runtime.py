"""The kernel-side runtime: context loading, the installed functions, and a real kernel."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import types
from pathlib import Path

import pytest

from rlm_kernel import runtime
from rlm_kernel.bridge import BridgeServer, SubcallRequest


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
    # No cell runs outside a kernel, so the requests name none.
    assert ns["_transport"].requests == [
        ("subcall", {"kind": "llm", "prompts": ["hi"], "model": "m", "cell": None}),
        ("subcall", {"kind": "llm", "prompts": ["a", "b", "c"], "model": None, "cell": None}),
    ]


def test_rlm_query_hands_its_context_over_by_file(tmp_path):
    namespace: dict = {}
    transport = RecordingTransport()
    runtime.install(namespace, transport, handoff_dir=str(tmp_path / "run.children"))
    assert namespace["rlm_query"]("q") == "Q"
    assert transport.requests[-1][1]["contexts"] == [None]
    assert namespace["rlm_query_batched"](["a", "b"], contexts=["text", {"k": [1]}]) == ["A", "B"]
    payload = transport.requests[-1][1]
    assert payload["kind"] == "rlm"
    first, second = payload["contexts"]
    # The host takes the files over; here nobody did, so they are still where the kernel put them.
    assert (first["kind"], second["kind"]) == ("text", "json")
    assert Path(first["path"]).read_text(encoding="utf-8") == "text"
    assert json.loads(Path(second["path"]).read_text(encoding="utf-8")) == {"k": [1]}
    assert all(
        os.path.dirname(c["path"]) == str(tmp_path / "run.children") for c in (first, second)
    )
    with pytest.raises(TypeError, match="context must be a str, a list or a dict"):
        namespace["rlm_query"]("q", context=object())
    with pytest.raises(TypeError, match="JSON values only"):
        namespace["rlm_query"]("q", context=[object()])
    with pytest.raises(ValueError, match="2 prompts but 1 contexts"):
        namespace["rlm_query_batched"](["a", "b"], contexts=["x"])


def test_a_failed_request_leaves_no_handoff_file(tmp_path):
    namespace: dict = {}

    class Broken:
        def request(self, op, payload):
            raise runtime.BridgeError("the host went away")

    runtime.install(namespace, Broken(), handoff_dir=str(tmp_path))
    with pytest.raises(runtime.BridgeError):
        namespace["rlm_query"]("q", context="some text")
    assert [p.name for p in tmp_path.iterdir()] == []


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
        return {
            "error": {
                "type": "BudgetExceeded",
                "message": "sub-call budget exhausted",
                "retries": 0,
            }
        }

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
    assert [(p["value"], p["via"]) for p in finals] == [
        ("12", "FINAL_VAR"),
        ("12", "FINAL_VAR"),
        ("12 apples", "FINAL_VAR"),
        ("['x']", "FINAL_VAR"),
        ("class", "FINAL_VAR"),
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
    runtime.install(ns, ns["_transport"], shell=shell)  # reinstalling replaces the hooks
    assert len(shell.events.callbacks["post_run_cell"]) == 2  # the cell tracker and the watch
    assert len(shell.events.callbacks["pre_run_cell"]) == 1
    shell.events.trigger("post_run_cell", None)
    ns["answer"] = {"content": 7, "ready": True}
    shell.events.trigger("post_run_cell", None)
    shell.events.trigger("post_run_cell", None)
    ns["answer"]["content"] = 8
    shell.events.trigger("post_run_cell", None)
    finals = [p for op, p in ns["_transport"].requests if op == "final"]
    assert [(p["value"], p["via"]) for p in finals] == [("7", "answer"), ("8", "answer")]


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
        "'answer', 'context', 'llm_query', 'llm_query_batched', 'rlm_query', "
        "'rlm_query_batched']",
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
    assert len(code.splitlines()) <= 14
    # The values travel as one JSON literal, decoded in the kernel, never spliced into code.
    literal = code.split("_rlm_bootstrap(", 2)[2].rsplit(")", 1)[0]
    settings = json.loads(ast.literal_eval(literal))
    assert settings["token"] == "t'ok" and settings["address"] == "unix:/tmp/a b.sock"
    assert (settings["context_path"], settings["context_kind"]) == (None, "json")


# --------------------------------------------------------------------------- a real kernel


class KernelHandler:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.finals: list[tuple[str, str]] = []

        self.blocked = asyncio.Event()
        self.cancelled = False

    async def subcall(self, request: SubcallRequest) -> str:
        prompt, kind = request.prompt, request.kind
        if prompt == "block":
            self.blocked.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        self.calls.append((prompt, kind))
        return f"sub-model read {len(prompt)} chars"

    async def final(self, value: str, *, via: str, cell: str | None = None) -> None:
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
                handoff_dir=str(tmp_path / "run.children"),
            )
            assert await _execute(kc, code, silent=True, store_history=False) == ("ok", "", [])
            status, out, errs = await _execute(
                kc, "print(type(context).__name__, len(context))\nprint(llm_query(context[:9]))"
            )
            assert (status, errs) == ("ok", [])
            assert out == "str 9000\nsub-model read 9 chars\n"
            status, out, errs = await _execute(kc, "print(rlm_query('count', context=context[:5]))")
            assert out == "sub-model read 5 chars\n"  # the context travels by file, not here
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
    assert handler.calls == [("needle é ", "llm"), ("count", "rlm"), ("again", "llm")]
    assert handler.finals == [("done", "FINAL"), ("from the dict", "answer")]
