"""The floors: what each figure would cost with nothing but the parts it cannot avoid.

A bare Jupyter kernel driven by ``jupyter_client`` alone, a raw socket echo from the kernel to
the host, a bare SDK call to the model server, an mmap decode of the same file. Each is measured
in the same process and the same run as the figure it sits beside.
"""

from __future__ import annotations

import asyncio
import json
import mmap
import random
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jupyter_client import AsyncKernelManager

from rlm_kernel.kernel import kernel_env

from .report import MIB


class BareKernel:
    """A kernel driven by jupyter_client alone, started as ``KernelSession`` starts one.

    The ipc transport, the same scrubbed environment, history off; ``async with`` starts it
    (with a warm-up) and kills it.
    """

    def __init__(self, work: Path) -> None:
        self.work = work
        self.rt = Path(tempfile.mkdtemp(prefix="rlmb-", dir="/tmp"))
        self.km = AsyncKernelManager(
            transport="ipc", ip=str(self.rt / "k"), connection_file=str(self.rt / "kernel.json")
        )
        self.kc: Any = None

    async def __aenter__(self) -> BareKernel:
        env = kernel_env((), {"IPYTHONDIR": str(self.rt / "ipython")})
        await self.km.start_kernel(
            env=env, cwd=str(self.work), extra_arguments=["--HistoryManager.enabled=False"]
        )
        self.kc = self.km.client()
        self.kc.start_channels()
        await self.kc.wait_for_ready(timeout=60)
        await self.round_trip()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        await self.km.shutdown_kernel(now=True)
        shutil.rmtree(self.rt, ignore_errors=True)

    async def round_trip(self, code: str = "x = 1") -> float:
        """One ``execute_interactive(code)``, outputs dropped; seconds."""
        start = time.perf_counter()
        await self.kc.execute_interactive(code, output_hook=lambda msg: None, timeout=60)
        return time.perf_counter() - start


class SdkFloor:
    """Bare calls of the ``openai`` SDK to the benchmark's model server, no framework around."""

    def __init__(self, base_url: str, api_key: str) -> None:
        import openai

        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)

    async def call(self, model: str, prompt: str = "p") -> float:
        """One non-streamed chat completion; seconds."""
        start = time.perf_counter()
        await self.client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=16, timeout=60
        )
        return time.perf_counter() - start

    async def aclose(self) -> None:
        """Close the SDK's connections."""
        await self.client.close()


class RawHttp:
    """Chat completions over kept HTTP/1.1 connections with asyncio streams and nothing else.

    What the model server itself takes for a call, with no client library around it: beside
    the SDK floor, it tells the server's share of a figure from the SDK's.
    """

    def __init__(self, base_url: str, api_key: str) -> None:
        url = urllib.parse.urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.head = (
            f"POST {url.path.rstrip('/')}/chat/completions HTTP/1.1\r\n"
            f"Host: {url.netloc}\r\nAuthorization: Bearer {api_key}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def call(self, model: str) -> None:
        """One non-streamed chat completion; the reply is read and dropped."""
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "p"}]})
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(self.head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode()))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await asyncio.wait_for(reader.readexactly(length), 60)
        self.idle.append((reader, writer))

    async def aclose(self) -> None:
        """Close the kept connections."""
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


class Echo(asyncio.Protocol):
    """Echo each 4-byte-length-framed message back: the floor of a kept local round trip."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        start = 0
        while len(buf) - start >= 4:
            end = start + 4 + int.from_bytes(buf[start : start + 4], "big")
            if end > len(buf):
                break
            self.transport.write(buf[start:end])
            start = end
        self.buf = buf[start:]


def write_ascii(path: Path, size: int) -> None:
    """Write ``size`` bytes (a multiple of 1 MiB) of seeded ASCII words to ``path``."""
    rng = random.Random(0)
    words = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(2000)
    ]
    lines, length = [], 0
    while length < MIB:
        line = " ".join(rng.choices(words, k=12)) + "\n"
        lines.append(line)
        length += len(line)
    chunk = "".join(lines).encode("ascii")[:MIB]
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(chunk)


def mmap_decode(path: Path) -> int:
    """Map ``path`` and decode it as UTF-8 into one ``str``; its length."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return len(str(mm, "utf-8"))


def proc_rss_mib(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` (peak) of a process, in MiB, from ``/proc``."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


async def capped(n: int, cap: int, call: Callable[[], Awaitable[object]]) -> float:
    """Seconds of ``n`` calls of ``call`` made concurrently, at most ``cap`` at a time."""
    slots = asyncio.Semaphore(cap)

    async def one() -> None:
        async with slots:
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - start


def timed(fn: Callable[[], object], reps: int) -> list[float]:
    """Seconds of ``reps`` calls of ``fn``."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times
