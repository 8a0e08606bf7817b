"""Output floods: host memory and time while a cell prints far more than the notebook keeps.

Two figures, each printed next to its floor or target:

1. Host RSS growth while one cell of a real run (``RLM.run``, a scripted root model) prints
   ``--flood-mb`` (default 1,000) MB in 1 MB writes. Target: < 100 MiB. The floor, for
   information, is what a plain ``jupyter_client`` host grows by for a ``--step-mb`` print.
2. A ``--step-mb`` (default 50) MB print in 1 MB writes: the cell through ``KernelSession``
   with the run's output cap and collector (what a run step does with output), against a plain
   ``jupyter_client`` execute of the same code on a plain ipykernel that collects every iopub
   message (the bare kernel's own time). Target: ≤ 1.2×. Medians of ``--repeat`` runs.

RSS is sampled from ``/proc/self/statm`` every 5 ms in a thread (Linux only). Prints a table,
then one JSON object. Exit status 0 whatever the outcome: the ``ok`` column says which targets
were met.

Usage::

    python benchmarks/output_flood.py [--flood-mb 1000] [--step-mb 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from jupyter_client import AsyncKernelManager

from rlm_kernel import RLM, _capture
from rlm_kernel.kernel import KernelSession
from rlm_kernel.outputs import OutputCollector
from rlm_kernel.types import Limits

MIB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")


def print_code(mb: int) -> str:
    return f"import sys\nfor _ in range({mb}): sys.stdout.write('x' * 1_000_000)\nprint('end')"


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """The highest RSS of this process while the block runs, sampled in a thread."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / MIB


# -- the bare kernel: jupyter_client and a plain ipykernel ----------------------------------


async def bare_print(code: str, repeat: int) -> tuple[list[float], float]:
    """Seconds per execute of ``code``, collecting iopub, and the host's RSS growth (MiB)."""
    runtime_dir = tempfile.mkdtemp(prefix="bare-")  # ipc, as rlm-kernel's own kernels use
    km = AsyncKernelManager(
        kernel_name="python3",
        transport="ipc",
        ip=os.path.join(runtime_dir, "k"),
        connection_file=os.path.join(runtime_dir, "kernel.json"),
    )
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        times = []
        growth = 0.0
        for _ in range(repeat):
            with PeakRSS() as peak:
                start = time.perf_counter()
                msg_id = kc.execute(code)
                received = []  # kept, as a host that records the output keeps it
                while True:
                    try:
                        msg = await kc.get_iopub_msg(timeout=60)
                    except queue.Empty:
                        raise TimeoutError("the bare kernel stopped sending") from None
                    if msg["parent_header"].get("msg_id") != msg_id:
                        continue
                    if msg["header"]["msg_type"] == "stream":
                        received.append(msg["content"]["text"])
                    elif (
                        msg["header"]["msg_type"] == "status"
                        and msg["content"]["execution_state"] == "idle"
                    ):
                        break
                times.append(time.perf_counter() - start)
            growth = max(growth, peak.growth_mib)
            del received
        return times, growth
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
        shutil.rmtree(runtime_dir, ignore_errors=True)


# -- ours -----------------------------------------------------------------------------------


async def capped_print(code: str, repeat: int) -> list[float]:
    """Seconds per cell through KernelSession with the run's output cap and collector."""
    limits = Limits()
    setup = _capture.setup_code(limits.max_cell_output_bytes, limits.max_output_chars)
    async with KernelSession(setup_code=setup, shutdown_grace=0) as ks:
        times = []
        for _ in range(repeat):
            collector = OutputCollector(
                limits.max_cell_output_bytes, tail_chars=limits.max_output_chars
            )
            start = time.perf_counter()
            await ks.execute(code, collector=collector)
            collector.shown(limits.max_output_chars)
            times.append(time.perf_counter() - start)
        return times


def run_flood(mb: int) -> tuple[float, int]:
    """Host RSS growth (MiB) of a whole run whose one cell prints ``mb`` MB; output chars."""
    replies = iter([f"```repl\n{print_code(mb)}\n```", "FINAL(done)"])

    def root(messages: list[dict]) -> str:
        return next(replies, "FINAL(done)")

    with tempfile.TemporaryDirectory() as tmp:
        warm = RLM(lambda m: "FINAL(warm)", lambda m: "", display=False)
        warm.run("q", context="c", notebook=Path(tmp, "warm.ipynb"))  # imports, first kernel
        rlm = RLM(root, lambda m: "", display=False, cell_timeout=600)
        with PeakRSS() as peak:
            result = rlm.run("q", context="c", notebook=Path(tmp, "flood.ipynb"))
        if result.status != "answered":
            raise RuntimeError(f"the flood run ended {result.status}: {result.error}")
        from rlm_kernel.record import read

        (cell,) = [c for c in read(result.notebook).code_cells if c.source.startswith("import")]
        return peak.growth_mib, cell.exec.output_chars


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood-mb", type=int, default=1000)
    parser.add_argument("--step-mb", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not Path("/proc/self/statm").exists():
        print("output_flood.py needs Linux (/proc/self/statm)", file=sys.stderr)
        return 2

    print(f"flood: one run, a cell printing {args.flood_mb} MB ...", file=sys.stderr)
    growth, chars = run_flood(args.flood_mb)
    print(f"step: {args.step_mb} MB print, {args.repeat} times each ...", file=sys.stderr)
    code = print_code(args.step_mb)
    bare_times, bare_growth = asyncio.run(bare_print(code, args.repeat))
    ours_times = asyncio.run(capped_print(code, args.repeat))
    bare, ours = statistics.median(bare_times), statistics.median(ours_times)

    rows = [
        (
            f"host RSS growth, {args.flood_mb} MB printed",
            f"{growth:.1f} MiB",
            f"bare host, {args.step_mb} MB: {bare_growth:.1f} MiB",
            "< 100 MiB",
            growth < 100,
        ),
        (
            f"{args.step_mb} MB print step",
            f"{ours:.3f} s ({ours / bare:.2f}x)",
            f"bare kernel {bare:.3f} s",
            "<= 1.2x",
            ours <= 1.2 * bare,
        ),
    ]
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    for row in rows:
        cells = [str(row[i]).ljust(widths[i]) for i in range(4)]
        print("  ".join(cells) + ("  ok" if row[4] else "  MISSED"))
    print(
        json.dumps(
            {
                "flood_mb": args.flood_mb,
                "flood_output_chars": chars,
                "host_rss_growth_mib": round(growth, 1),
                "bare_host_rss_growth_mib": round(bare_growth, 1),
                "step_mb": args.step_mb,
                "step_s": round(ours, 4),
                "bare_step_s": round(bare, 4),
                "ratio": round(ours / bare, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
