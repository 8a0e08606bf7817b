"""The bridge end to end: a real BridgeServer on a real socket, driven by the kernel runtime."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import stat
import struct
import tempfile
import threading

import pytest

from rlm_kernel import errors, runtime
from rlm_kernel.bridge import BridgeServer, SubcallRequest


class Handler:
    """Answers by prompt: ``fail``, ``budget``, ``empty-error``, ``sleep:S:x``, ``block``, echo."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str]] = []
        self.finals: list[tuple[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.blocked = threading.Event()
        self.cancelled = threading.Event()

    async def subcall(self, request: SubcallRequest) -> str:
        prompt, model, kind = request.prompt, request.model, request.kind
        self.calls.append((prompt, model, kind))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if prompt == "fail":
                raise ValueError("the sub-model said no")
            if prompt == "budget":
                raise errors.BudgetExceeded("sub-calls", 3, 3)
            if prompt == "empty-error":
                raise RuntimeError()
            if prompt.startswith("sleep:"):
                _, seconds, text = prompt.split(":", 2)
                await asyncio.sleep(float(seconds))
                return text
            if prompt == "block":
                self.blocked.set()
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    self.cancelled.set()
                    raise
            return f"echo {prompt}"
        finally:
            self.in_flight -= 1

    async def final(self, value: str, *, via: str, cell: str | None = None) -> None:
        self.finals.append((value, via))


class ServerThread:
    """A BridgeServer on its own event loop in a background thread."""

    def __init__(self, handler: Handler, **kwargs: object) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = BridgeServer(handler, **kwargs)  # type: ignore[arg-type]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.server.start())

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self.call(self.server.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def short_dir():
    # Unix socket paths must stay under ~100 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="rlmb") as d:
        yield d


@pytest.fixture(params=["unix", "tcp"])
def served(request, short_dir):
    handler = Handler()
    kwargs = {"unix_path": os.path.join(short_dir, "b.sock")} if request.param == "unix" else {}
    st = ServerThread(handler, max_concurrency=4, **kwargs)
    yield st, handler
    st.close()


def connect(st: ServerThread) -> tuple[dict, runtime.SocketTransport]:
    ns: dict = {}
    transport = runtime.SocketTransport(st.server.address, st.server.token)
    runtime.install(ns, transport)
    return ns, transport


def test_round_trip_over_unix_and_tcp(served):
    st, handler = served
    ns, _ = connect(st)
    scheme = st.server.address.split(":", 1)[0]
    assert scheme in ("unix", "tcp")
    assert ns["llm_query"]("hello") == "echo hello"
    assert ns["llm_query"]("hi", model="small") == "echo hi"
    # A live host that gave no hand-off folder cannot take a context: a clear error, not a loss.
    with pytest.raises(runtime.BridgeError, match="cannot hand a context to the host"):
        ns["rlm_query"]("sum it", context=[1, 2])
    assert ns["rlm_query"]("sum it") == "echo sum it"
    assert handler.calls == [
        ("hello", None, "llm"),
        ("hi", "small", "llm"),
        ("sum it", None, "rlm"),
    ]


def test_batch_keeps_order_and_respects_the_concurrency_cap(served):
    st, handler = served
    ns, _ = connect(st)
    rng = random.Random(7)
    prompts = [f"sleep:{rng.uniform(0, 0.02):.4f}:answer {i}" for i in range(60)]
    assert ns["llm_query_batched"](prompts) == [f"answer {i}" for i in range(60)]
    assert handler.max_in_flight == 4


def test_cap_is_shared_by_all_connections(served):
    st, handler = served
    results: list[list[str]] = []

    def batch(tag: str) -> None:
        ns, _ = connect(st)
        results.append(ns["llm_query_batched"]([f"sleep:0.01:{tag}{i}" for i in range(12)]))

    threads = [threading.Thread(target=batch, args=(t,)) for t in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(r[0] for r in results) == ["a0", "b0", "c0"]
    assert handler.max_in_flight == 4


def test_wrong_token_is_refused(served):
    st, handler = served
    ns: dict = {}
    runtime.install(ns, runtime.SocketTransport(st.server.address, "not-the-token"))
    with pytest.raises(runtime.BridgeError, match=r"refused the connection.*wrong token"):
        ns["llm_query"]("hello")
    assert handler.calls == []


def test_first_frame_must_be_a_small_hello(short_dir):
    st = ServerThread(Handler(), unix_path=os.path.join(short_dir, "b.sock"))
    try:
        path = st.server.address[len("unix:") :]
        for frame in (
            _frame({"id": 1, "op": "subcall", "kind": "llm", "prompts": ["x"], "model": None}),
            struct.pack(">I", 10_000_000) + b"{",
            _frame([1, 2]),
        ):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                s.sendall(frame)
                reply = _read(s)
                assert reply["error"]["type"] == "AuthError"
                assert s.recv(1) == b""  # closed by the server
    finally:
        st.close()


def test_malformed_requests_get_protocol_errors(served):
    st, _ = served
    with _raw_connection(st) as s:
        s.sendall(_frame({"id": 5, "op": "launch"}))
        assert _read(s) == {
            "id": 5,
            "error": {
                "type": "ProtocolError",
                "message": "unknown op 'launch'; expected 'subcall', 'tool' or 'final'",
                "retries": 0,
            },
        }
        s.sendall(_frame({"id": 6, "op": "subcall", "kind": "llm", "prompts": [1], "model": None}))
        assert _read(s)["error"]["message"] == "'prompts' must be a list of strings"
        s.sendall(_frame({"id": 7, "op": "final", "value": "x", "via": "shout"}))
        assert _read(s)["error"]["type"] == "ProtocolError"
        s.sendall(_frame({"op": "final"}))
        assert _read(s)["error"]["message"] == "a request needs an integer 'id'"


def test_handler_errors_become_exceptions_with_messages(served):
    st, _ = served
    ns, _ = connect(st)
    with pytest.raises(runtime.SubcallError, match=r"^ValueError: the sub-model said no$"):
        ns["llm_query"]("fail")
    with pytest.raises(runtime.BudgetExceeded, match="sub-calls budget exhausted: 3 used of 3"):
        ns["llm_query"]("budget")
    with pytest.raises(runtime.SubcallError, match=r"^RuntimeError$"):
        ns["llm_query"]("empty-error")


def test_batch_failures_carry_partial_results(served):
    st, _ = served
    ns, _ = connect(st)
    with pytest.raises(runtime.SubcallError) as info:
        ns["llm_query_batched"](["a", "fail", "b", "fail"])
    assert str(info.value) == "2 of 4 prompts failed; first (#1): ValueError: the sub-model said no"
    assert info.value.partial == ["echo a", None, "echo b", None]
    assert info.value.errors == {
        1: "ValueError: the sub-model said no",
        3: "ValueError: the sub-model said no",
    }
    with pytest.raises(runtime.BudgetExceeded, match="2 of 3 prompts failed") as budget:
        ns["llm_query_batched"](["fail", "a", "budget"])
    assert budget.value.partial == [None, "echo a", None]


def test_final_final_var_and_answer_reach_the_handler(served):
    from IPython.core.events import EventManager, available_events

    st, handler = served
    ns: dict = {}
    shell = _Shell()
    shell.events = EventManager(shell, available_events)
    runtime.install(ns, runtime.SocketTransport(st.server.address, st.server.token), shell=shell)
    ns["FINAL"](42)
    ns["result"] = [1, 2]
    ns["FINAL_VAR"]("result")
    ns["FINAL_VAR"](3.5)
    ns["FINAL_VAR"]("the answer is 7")
    with pytest.raises(NameError, match="no variable named 'resutl'; did you mean result"):
        ns["FINAL_VAR"]("resutl")
    shell.events.trigger("post_run_cell", None)  # answer not ready: nothing sent
    ns["answer"]["content"] = "from the dict"
    ns["answer"]["ready"] = True
    shell.events.trigger("post_run_cell", None)
    shell.events.trigger("post_run_cell", None)  # same value: sent once
    assert handler.finals == [
        ("42", "FINAL"),
        ("[1, 2]", "FINAL_VAR"),
        ("3.5", "FINAL_VAR"),
        ("the answer is 7", "FINAL_VAR"),
        ("from the dict", "answer"),
    ]


def test_concurrent_threads_share_one_pipelined_connection(served):
    st, handler = served
    ns, _ = connect(st)
    query = ns["llm_query"]
    failures: list[str] = []

    def worker(w: int) -> None:
        rng = random.Random(w)
        for i in range(25):
            expected = f"w{w} r{i}"
            got = query(f"sleep:{rng.uniform(0, 0.003):.4f}:{expected}")
            if got != expected:
                failures.append(f"{expected!r} got {got!r}")

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failures == []
    assert len(handler.calls) == 200
    assert handler.max_in_flight > 1  # requests really overlapped on the connection
    assert len(st.server._connections) == 1


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX signals")
def test_interrupt_mid_request_cancels_host_work_and_reconnects(served):
    st, handler = served
    ns, _ = connect(st)
    assert ns["llm_query"]("before") == "echo before"
    main = threading.main_thread().ident
    assert threading.get_ident() == main

    def interrupt() -> None:
        if handler.blocked.wait(10):
            signal.pthread_kill(main, signal.SIGINT)  # what a cell timeout does to the kernel

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        ns["llm_query"]("block")
    assert handler.cancelled.wait(10), "the host kept running the abandoned sub-call"
    assert ns["llm_query"]("after") == "echo after"


def test_host_going_away_is_a_bridge_error_then_a_new_server_works(short_dir):
    handler = Handler()
    path = os.path.join(short_dir, "b.sock")
    st = ServerThread(handler, unix_path=path)
    ns, _ = connect(st)
    assert ns["llm_query"]("one") == "echo one"
    token = st.server.token
    st.close()
    assert not os.path.exists(path)
    with pytest.raises(runtime.BridgeError):
        ns["llm_query"]("two")
    st2 = ServerThread(handler, unix_path=path)
    try:
        st2.server.token = token  # same address and token: the kernel's transport reconnects
        assert ns["llm_query"]("three") == "echo three"
    finally:
        st2.close()


def test_megabyte_prompts_and_large_batches(served):
    st, _ = served
    ns, _ = connect(st)
    big = "é" * 3_000_000 + "x" * 2_000_000
    assert ns["llm_query"](big) == "echo " + big
    prompts = [f"{i}:" + "y" * 2000 for i in range(1200)]
    assert ns["llm_query_batched"](prompts) == ["echo " + p for p in prompts]


def test_unix_socket_is_private_and_removed_on_close(short_dir):
    path = os.path.join(short_dir, "b.sock")
    st = ServerThread(Handler(), unix_path=path)
    assert st.server.address == f"unix:{path}"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    st.close()
    assert not os.path.exists(path)


def test_address_before_start_is_an_error():
    server = BridgeServer(Handler())
    with pytest.raises(errors.BridgeError, match="not been started"):
        _ = server.address
    with pytest.raises(ValueError, match="max_concurrency"):
        BridgeServer(Handler(), max_concurrency=0)


class _Shell:
    """Just enough of an IPython shell to hold a real EventManager."""

    events: object = None


def _frame(message: object) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack(">I", len(body)) + body


def _read(s: socket.socket) -> dict:
    s.settimeout(10)
    header = b""
    while len(header) < 4:
        header += s.recv(4 - len(header))
    (size,) = struct.unpack(">I", header)
    body = b""
    while len(body) < size:
        body += s.recv(size - len(body))
    return json.loads(body)


@contextlib.contextmanager
def _raw_connection(st: ServerThread):
    family, target = runtime._parse_address(st.server.address)
    with socket.socket(family) as s:
        s.connect(target)
        s.sendall(_frame({"op": "hello", "token": st.server.token}))
        assert _read(s) == {"op": "hello", "ok": True}
        yield s
