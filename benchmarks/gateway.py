"""Kernels through a Jupyter Kernel Gateway next to local kernels, measured in the same run.

Starts ``jupyter-kernel-gateway`` on 127.0.0.1 with a token (``pip install 'rlm-kernel[test]'``)
and measures, each beside its local or bare counterpart:

1. the bare round trip of an empty cell (``execute("pass")``): gateway vs a local kernel;
2. per-step overhead of a 30-step run (one ``x = 1`` cell per step, zero-latency model);
3. sequential ``llm_query`` round trip, timed in the kernel: the TCP bridge from a gateway
   kernel vs the Unix-socket bridge from a local kernel;
4. a 100 MB context: upload in 1 MiB chunks with the SHA-256 check, and the whole start
   (kernel, uploads, setup that memory-maps it), vs a local start that maps the host's file;
5. batch throughput for 1, 2, 4 and 8 workers (16 tasks of 2 steps, a model that sleeps
   200 ms per reply), on local kernels.

Usage::

    python benchmarks/gateway.py [--json-out results.json] [--skip-batch]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from gateway_server import MISSING, installed, kernel_gateway

from rlm_kernel import RLM, runtime
from rlm_kernel.batching import abatch
from rlm_kernel.bridge import BridgeServer
from rlm_kernel.gateway import Gateway
from rlm_kernel.kernel import KernelSession

MIB = 1024 * 1024


class Echo:
    async def subcall(self, prompt: str, *, model: str | None, kind: str) -> str:
        return prompt

    async def final(self, value: str, *, via: str) -> None:
        return None


def stream_text(result: Any) -> str:
    return "".join(o.get("text", "") for o in result.outputs if o["output_type"] == "stream")


async def empty_cells(ks: Any, n: int = 50) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await ks.execute("pass", timeout=30)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


SUBCALLS = (
    "import time\nt = time.perf_counter()\nfor _ in range(500):\n    llm_query('p')\n"
    "print((time.perf_counter() - t) / 500)\n"
)


async def measure_sessions(gateway: Gateway, context: Path) -> dict[str, float]:
    figures: dict[str, float] = {}
    async with gateway(setup_code="x = 1") as ks:
        figures["gateway_empty_cell_s"] = await empty_cells(ks)
    async with KernelSession(setup_code="x = 1", shutdown_grace=0) as ks:
        figures["local_empty_cell_s"] = await empty_cells(ks)

    async with BridgeServer(Echo(), host="127.0.0.1") as bridge:
        started = time.perf_counter()
        session = gateway.bootstrap(
            address=bridge.address, token=bridge.token, context_path=context
        )
        async with session as ks:
            figures["gateway_start_with_100mb_s"] = time.perf_counter() - started
            figures["gateway_upload_100mb_s"] = session.uploads["context"]["seconds"]
            result = await ks.execute(SUBCALLS, timeout=120)
            figures["gateway_tcp_subcall_s"] = float(stream_text(result))
    with tempfile.TemporaryDirectory() as tmp:
        async with BridgeServer(Echo(), unix_path=Path(tmp) / "b.sock") as bridge:
            setup = runtime.bootstrap_code(
                runtime.__file__,
                address=bridge.address,
                token=bridge.token,
                context_path=str(context),
            )
            started = time.perf_counter()
            async with KernelSession(setup_code=setup, shutdown_grace=0) as ks:
                figures["local_start_with_100mb_s"] = time.perf_counter() - started
                result = await ks.execute(SUBCALLS, timeout=120)
                figures["local_unix_subcall_s"] = float(stream_text(result))
    started = time.perf_counter()
    async with gateway():
        figures["gateway_bare_start_s"] = time.perf_counter() - started
    return figures


async def steps_model(messages: list[dict]) -> str:
    return "```repl\nx = 1\n```"


async def measure_steps(gateway: Gateway, steps: int = 30) -> dict[str, float]:
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, session in (("gateway", gateway), ("local", None)):
            rlm = RLM(steps_model, steps_model, session=session, display=False, max_steps=steps)
            result = await rlm.arun("q", "ctx", notebook=Path(tmp) / f"{name}.ipynb")
            # A run of N steps: N cells plus the last call; start and stop are in both.
            figures[f"{name}_run_{steps}_steps_s"] = result.duration_s
    return figures


async def slow_model(messages: list[dict]) -> str:
    await asyncio.sleep(0.2)
    if len(messages) <= 2:
        return "```repl\nn = len(context)\n```"
    return "FINAL_VAR(n)"


async def measure_batch(tasks: int = 16) -> dict[str, float]:
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        items = [{"id": str(i), "question": "q", "context": __file__} for i in range(tasks)]
        for workers in (1, 2, 4, 8):
            started = time.perf_counter()
            summary = await abatch(
                items,
                out=Path(tmp) / f"w{workers}",
                workers=workers,
                model=slow_model,
                sub_model=slow_model,
            )
            elapsed = time.perf_counter() - started
            assert summary.counts()["answered"] == tasks, summary.to_dict()
            figures[f"batch_{workers}_workers_tasks_per_s"] = tasks / elapsed
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--skip-batch", action="store_true")
    args = parser.parse_args()
    if not installed():
        print(MISSING, file=sys.stderr)
        return 2
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, kernel_gateway() as kg:
        context = Path(tmp) / "context.txt"
        with open(context, "w", encoding="utf-8") as f:
            line = "the quick brown fox jumps over the lazy dog 0123456789\n"
            f.write(line * (100 * MIB // len(line)))
        gateway = Gateway(kg.url, token=kg.token)
        print("sessions ...", file=sys.stderr)
        figures.update(asyncio.run(measure_sessions(gateway, context)))
        print("steps ...", file=sys.stderr)
        figures.update(asyncio.run(measure_steps(gateway)))
        left = kg.kernels()
    if not args.skip_batch:
        print("batch ...", file=sys.stderr)
        figures.update(asyncio.run(measure_batch()))
    figures["kernels_left_on_gateway"] = len(left)
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key.ljust(width)}  {value:12.6f}")
    text = json.dumps(figures)
    print(text)
    if args.json_out:
        args.json_out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
