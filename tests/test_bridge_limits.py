"""The bridge's bounds, on real sockets: frame sizes, the handshake deadline, connection floods.

Also the framing itself, property-based: any split of any sequence of frames into TCP reads
gives the same requests, in order.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import struct
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bridge import Handler, ServerThread, _frame, _raw_connection, _read, connect

from rlm_kernel import bridge, bridge_wire, errors, runtime
from rlm_kernel.bridge import BridgeServer, socket_dir


@pytest.fixture(params=["unix", "tcp"])
def kind(request):
    return request.param


@pytest.fixture
def make_server(kind):
    """Start a BridgeServer with the given options; closed after the test."""
    servers = []
    dirs = []

    def make(**kwargs):
        if kind == "unix":
            d = socket_dir(prefix="rlmt-")
            dirs.append(d)
            kwargs["unix_path"] = d / "b.sock"
        handler = Handler()
        server = ServerThread(handler, **kwargs)
        servers.append(server)
        return server, handler

    yield make
    for server in servers:
        server.close()
    for d in dirs:
        os.rmdir(d)  # the server removed its socket: the directory is empty


def _open(st: ServerThread) -> socket.socket:
    family, target = runtime._parse_address(st.server.address)
    s = socket.socket(family)
    s.connect(target)
    return s


def _closed_by_peer(s: socket.socket, timeout: float = 10) -> bool:
    """Whether the server closes ``s``, reading (and discarding) whatever it sends first."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


# -- frame size ------------------------------------------------------------------------------


@pytest.mark.parametrize("announced", [200 << 20, 1 << 30], ids=["under-the-cap", "over-the-cap"])
def test_a_header_announcing_a_huge_frame_allocates_nothing_of_it(make_server, announced):
    st, _ = make_server()
    assert (announced > st.server.max_frame_bytes) is (announced == 1 << 30)
    with _raw_connection(st) as s:
        s.sendall(struct.pack(">I", announced) + b'{"id": 5, "op": "subcall", "prompts": ["')
        time.sleep(0.2)  # let the server read what was sent
        (conn,) = st.call(_connections(st.server))
        assert len(conn._buf) < 1024 * 1024  # the buffer follows what arrived, not the header


async def _connections(server: BridgeServer):
    return list(server._connections)


def test_an_oversized_request_is_refused_and_the_connection_stays_in_step(make_server):
    st, handler = make_server(max_frame_bytes=100_000)
    ns, _ = connect(st)
    with pytest.raises(runtime.BridgeError, match=r"larger than the bridge accepts \(100000"):
        ns["llm_query"]("x" * 200_000)
    assert handler.calls == []  # never reached the handler
    # The same connection goes on serving requests of an acceptable size.
    assert ns["llm_query"]("small") == "echo small"
    assert ns["llm_query_batched"](["a" * 40_000, "b"]) == ["echo " + "a" * 40_000, "echo b"]


def test_an_oversized_frame_without_a_readable_id_closes_the_connection(make_server):
    st, _ = make_server(max_frame_bytes=65_536)
    with _raw_connection(st) as s:
        body = b"[" + b"1," * 40_000 + b"1]"
        s.sendall(struct.pack(">I", len(body)) + body)
        reply = _read(s)
        error = reply["error"]
        assert error["type"] == "ProtocolError"
        assert "larger than the bridge accepts" in error["message"]
        assert "id" not in reply
        assert _closed_by_peer(s)


def test_oversized_hello_is_refused(make_server):
    st, _ = make_server()
    s = _open(st)
    with s:
        s.sendall(struct.pack(">I", 10_000_000))
        assert _read(s)["error"]["type"] == "AuthError"
        assert _closed_by_peer(s)


# -- handshake deadline and connection cap ---------------------------------------------------


def test_a_connection_that_never_says_hello_is_closed(make_server):
    st, _ = make_server(handshake_timeout=0.3)
    with _open(st) as s:
        assert _closed_by_peer(s)  # the AuthError reply, then the close
    assert st.call(_connections(st.server)) == []


def test_an_authenticated_idle_connection_stays_open(make_server):
    st, _ = make_server(handshake_timeout=0.2)
    ns, _ = connect(st)
    assert ns["llm_query"]("one") == "echo one"
    time.sleep(0.5)  # past the handshake deadline
    assert ns["llm_query"]("two") == "echo two"
    assert len(st.call(_connections(st.server))) == 1  # the same connection, never dropped


def test_a_flood_of_idle_connections_is_capped_and_kernels_still_connect(make_server):
    st, _ = make_server(max_connections=8, handshake_timeout=1.0)
    flood = [_open(st) for _ in range(40)]
    try:
        time.sleep(0.2)
        assert len(st.call(_connections(st.server))) <= 8
        assert st.server.refused_connections >= 32
        # The idle ones time out; then a kernel gets in again.
        deadline = time.monotonic() + 10
        while st.call(_connections(st.server)) and time.monotonic() < deadline:
            time.sleep(0.05)
        ns, _ = connect(st)
        assert ns["llm_query"]("after") == "echo after"
    finally:
        for s in flood:
            s.close()


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="max_connections"):
        BridgeServer(Handler(), max_connections=0)
    with pytest.raises(ValueError, match="max_frame_bytes"):
        BridgeServer(Handler(), max_frame_bytes=10)


# -- socket paths ----------------------------------------------------------------------------


def test_socket_dir_is_short_and_private_even_under_a_long_tmpdir(monkeypatch, tmp_path):
    long = tmp_path / ("t" * 60) / ("u" * 60)
    long.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(long))
    d = socket_dir()
    try:
        assert not str(d).startswith(str(long))
        assert len(os.fsencode(d / "bridge.sock")) <= bridge.MAX_UNIX_PATH
        assert oct(d.stat().st_mode & 0o777) == "0o700"
        handler = Handler()
        st = ServerThread(handler, unix_path=d / "bridge.sock")
        try:
            ns, _ = connect(st)
            assert ns["llm_query"]("hi") == "echo hi"
        finally:
            st.close()
    finally:
        os.rmdir(d)


def test_socket_dir_uses_tmpdir_when_it_is_short(monkeypatch):
    with tempfile.TemporaryDirectory(prefix="s") as short:
        monkeypatch.setattr(tempfile, "tempdir", short)
        d = socket_dir()
        assert str(d.parent) == short
        os.rmdir(d)


def test_a_socket_path_too_long_is_a_clear_bridge_error(tmp_path):
    path = tmp_path / ("x" * 120) / "bridge.sock"
    with pytest.raises(
        errors.BridgeError, match=r"longer than a Unix socket path may be.*socket_dir"
    ):
        BridgeServer(Handler(), unix_path=path)


# -- framing, property-based -----------------------------------------------------------------

_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)
_requests = st.lists(
    st.one_of(
        st.builds(
            lambda prompts, model: {
                "op": "subcall",
                "kind": "llm",
                "prompts": prompts,
                "model": model,
            },
            st.lists(_text, min_size=1, max_size=4),
            st.none() | _text,
        ),
        st.builds(lambda v: {"op": "final", "value": v, "via": "FINAL"}, _text),
    ),
    min_size=1,
    max_size=12,
)


@pytest.fixture(scope="module")
def framing_server():
    with tempfile.TemporaryDirectory(prefix="rlmp") as d:
        st_ = ServerThread(Handler(), unix_path=os.path.join(d, "b.sock"))
        yield st_
        st_.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(requests=_requests, cuts=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=20))
def test_any_split_of_frames_gives_the_same_answers_in_order(framing_server, requests, cuts):
    stream = b"".join(_frame({"id": n, **r}) for n, r in enumerate(requests))
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in itertools.pairwise([0, *points, len(stream)]) if b > a]
    with _raw_connection(framing_server) as s:
        for piece in pieces:
            s.sendall(piece)
        replies = {}
        while len(replies) < len(requests):
            reply = _read(s)
            replies[reply["id"]] = reply
    for n, request in enumerate(requests):
        reply = replies[n]
        if request["op"] == "final":
            assert reply == {"id": n, "ok": True}
        else:
            assert [r["ok"] for r in reply["results"]] == [f"echo {p}" for p in request["prompts"]]


@settings(max_examples=60, deadline=None)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | _text,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
        max_leaves=20,
    )
)
def test_the_kernel_side_reads_back_what_the_host_encodes(value):
    # Host and kernel frame alike: what one encodes, the other's reader returns unchanged.
    a, b = socket.socketpair()
    with a, b:
        a.sendall(bridge_wire.encode({"id": 1, "v": value}) * 3)
        conn = runtime._Connection(b)
        got = []
        while len(got) < 3:
            got += runtime._read_frames(conn)
    assert got == [json.loads(json.dumps({"id": 1, "v": value}))] * 3
