"""Timing loops that run inside the benchmark's kernel (ours, or the reference's).

The overhead suite loads this file into the kernel with ``runpy.run_path`` and calls its
functions from short cells; each prints one ``BENCH {json}`` line that the host reads back from
the cell's output. Standard library only: the same file runs in rlm-kernel's kernel and in the
reference implementation's, which import nothing from the benchmark.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

_HEADER = struct.Struct(">I")
# The size of the frame that ``llm_query("p")`` sends, so the echo moves the same bytes.
_BODY = json.dumps(
    {"id": 1, "op": "subcall", "kind": "llm", "prompts": ["p"], "model": None}
).encode()


def report(name: str, value: Any) -> None:
    """Print one result line for the host."""
    print("BENCH " + json.dumps({"name": name, "value": value}))


def _echo_loop(sock: socket.socket, n: int) -> float:
    frame = _HEADER.pack(len(_BODY)) + _BODY
    start = time.perf_counter()
    for _ in range(n):
        sock.sendall(frame)
        data = sock.recv(65536)
        while len(data) < 4 or len(data) < 4 + _HEADER.unpack_from(data)[0]:
            more = sock.recv(65536)
            if not more:
                raise ConnectionError("the echo server closed the connection")
            data += more
    return (time.perf_counter() - start) / n * 1e6


def _query_loop(llm_query: Callable[[str], str], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        llm_query("p")
    return (time.perf_counter() - start) / n * 1e6


def round_trips(llm_query: Callable[[str], str], echo_path: str, n: int, reps: int) -> None:
    """Time ``n`` sequential ``llm_query`` calls and ``n`` echo round trips, ``reps`` times each.

    The echo is the floor: a kept Unix-socket connection from this kernel to an asyncio server
    in the host process, with the bridge's 4-byte length framing and a frame of the same size.
    Both are warmed up first and interleaved, so drift affects them alike. Reports µs per call.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(echo_path)
    try:
        _echo_loop(sock, 200)
        _query_loop(llm_query, 200)
        echo, query = [], []
        for _ in range(reps):
            echo.append(_echo_loop(sock, n))
            query.append(_query_loop(llm_query, n))
    finally:
        sock.close()
    report("echo_us", echo)
    report("llm_query_us", query)


def query_loop(llm_query: Callable[[str], str], n: int, reps: int) -> None:
    """Time ``n`` sequential ``llm_query`` calls ``reps`` times, after a warm-up (µs per call)."""
    _query_loop(llm_query, max(1, n // 10))
    report("llm_query_us", [_query_loop(llm_query, n) for _ in range(reps)])


def batched(llm_query_batched: Callable[[list[str]], list[str]], n: int, prefix: str) -> None:
    """Time one ``llm_query_batched`` of ``n`` prompts (seconds)."""
    prompts = [f"{prefix}{i}" for i in range(n)]
    start = time.perf_counter()
    answers = llm_query_batched(prompts)
    elapsed = time.perf_counter() - start
    if len(answers) != n:
        raise AssertionError(f"expected {n} answers, got {len(answers)}")
    report("batched_s", elapsed)


def load_alone(load_context: Callable[[str, str], Any], path: str, reps: int) -> None:
    """Time ``load_context(path, "text")`` ``reps`` times (seconds), freeing each copy."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        value = load_context(path, "text")
        times.append(time.perf_counter() - start)
        del value
    report("load_s", times)
