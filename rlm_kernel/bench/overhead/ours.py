"""rlm-kernel's side of the overhead suite: each figure measured beside its floor.

Runs go through the public :class:`~rlm_kernel.RLM` with ``openai:`` models served by the suite's
:class:`~.models.BenchModels`, the path a user's run takes; kernel-side timing loops come from
``kernel_side.py``, loaded into the kernel by path.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlm_kernel import RLM, runtime
from rlm_kernel.context import prepare
from rlm_kernel.errors import RLMKernelError
from rlm_kernel.kernel import KernelSession
from rlm_kernel.llm import resolve
from rlm_kernel.outputs import render_text
from rlm_kernel.record import read
from rlm_kernel.types import Limits

from .floors import (
    BareKernel,
    Echo,
    RawHttp,
    SdkFloor,
    capped,
    mmap_decode,
    proc_rss_mib,
    timed,
    write_ascii,
)
from .models import ANSWER, ROOT, X1, BenchModels, block, cell_question, steps_question
from .plan import Plan
from .report import MIB, Figure

KERNEL_SIDE = Path(__file__).resolve().with_name("kernel_side.py")
Log = Callable[[str], None]


class BenchFailed(RLMKernelError, RuntimeError):
    """A benchmark run did not do what the benchmark scripted (the figure would mean nothing)."""


def bench_cell(fn: str, args: str) -> str:
    """A cell that loads ``kernel_side.py`` (once) and calls its function ``fn(args)``."""
    return (
        "if '_bench' not in globals():\n"
        f"    _bench = __import__('runpy').run_path({str(KERNEL_SIDE)!r})\n"
        f"_bench[{fn!r}]({args})"
    )


def take(text: str, into: dict[str, Any]) -> None:
    """Collect the ``BENCH {json}`` lines of a cell's output."""
    for line in text.splitlines():
        if line.startswith("BENCH "):
            item = json.loads(line[6:])
            into[item["name"]] = item["value"]


class Suite:
    """rlm-kernel's measurements, sharing one work folder, one plan and one model server."""

    def __init__(self, models: BenchModels, plan: Plan, work: Path, log: Log) -> None:
        self.models = models
        self.plan = plan
        self.work = work
        self.log = log
        self.sdk = SdkFloor(models.base_url, models.api_key)
        self._runs = 0

    async def run(
        self, question: str, *, sub_latency: float = 0.0, **options: Any
    ) -> tuple[Any, dict[str, Any]]:
        """One run with the server's models; its result and the ``BENCH`` values it printed."""
        values: dict[str, Any] = {}

        def on_output(*, step: int, block: int, status: str, shown: str, **_: Any) -> None:
            if status != "ok":
                raise BenchFailed(f"benchmark cell {step}.{block} failed ({status}):\n{shown}")
            take(shown, values)

        self._runs += 1
        rlm = RLM(
            f"openai:{ROOT}",
            f"openai:{self.models.sub(sub_latency)}",
            display=False,
            on_output=on_output,
            # No child runs here: depth 1, as rlms runs by default, so no pool of warm kernels
            # starts beside the run (start-up measures the default tree's pool separately).
            **{"max_steps": 10, "max_depth": 1, **options},
        )
        notebook = self.work / f"run-{self._runs}.ipynb"
        result = await rlm.arun(question, "bench context", notebook=notebook)
        if result.status != "answered":
            raise BenchFailed(
                f"benchmark run {notebook.name} ended {result.status}: {result.error}"
            )
        return result, values

    async def timed_run(self, question: str, **options: Any) -> float:
        """Seconds of one run, from ``arun`` to its result."""
        start = time.perf_counter()
        await self.run(question, **options)
        return time.perf_counter() - start

    # -- per-step overhead ------------------------------------------------------------------

    async def steps(self) -> list[Figure]:
        # Ours: the time from one step's record to the next (on_step), in runs of `steps` steps
        # whose root model replies one ```repl x = 1``` block per step over HTTP: the model
        # call, the kernel execute, parsing and the notebook write of a step. rlms is measured
        # the same way, between its logger's calls. Floor: what a step cannot avoid, a bare SDK
        # call to the same server plus a bare execute_interactive("x = 1") on a kept kernel,
        # back to back. Medians over every step of `reps` runs.
        n = self.plan.steps
        ours: list[float] = []
        for _ in range(self.plan.reps):
            stamps: list[float] = []
            await self.run(
                steps_question(n),
                max_steps=n + 3,
                on_step=lambda stamps=stamps, **_: stamps.append(time.perf_counter()),
            )
            ours += [b - a for a, b in itertools.pairwise(stamps)]
        floor = []
        async with BareKernel(self.work) as bare:
            for _ in range(max(10, n)):
                floor.append(await self.sdk.call(ROOT, steps_question(1)) + await bare.round_trip())
        o, f = statistics.median(ours) * 1e3, statistics.median(floor) * 1e3
        self.log(f"per step: ours {o:.2f} ms, floor {f:.2f} ms")
        return [
            Figure(
                "per_step",
                "per-step overhead",
                o,
                f,
                "ms",
                "SDK call + bare kernel round trip",
                "≤ 1/2 × rlms",
                extra={"steps_ms": [round(x * 1e3, 3) for x in ours]},
            )
        ]

    async def growth(self) -> list[Figure]:
        # Notebook write cost as a run grows: one run of growth_steps steps with an in-process
        # zero-latency root (no HTTP). Every step rewrites the notebook, so a write that grew
        # with the run would show here. The figure is the host's own time per step: the time
        # from one step's record to the next (on_step) less what the notebook says the step's
        # root call and kernel executions took, since a kernel's execute round trip grows with
        # its execution count on its own (IPython's history), which is not the notebook's
        # doing. Median of the last `window` steps against the first `window` (the floor);
        # the whole step is given beside it.
        n, w = self.plan.growth_steps, self.plan.window
        stamps: list[float] = []

        def root(messages: list[dict]) -> str:
            done = sum(m["role"] == "assistant" for m in messages)
            return block(X1 if done < n - 1 else ANSWER)

        rlm = RLM(
            root,
            root,
            display=False,
            max_steps=n + 3,
            on_step=lambda stamps=stamps, **_: stamps.append(time.perf_counter()),
        )
        path = self.work / "growth.ipynb"
        result = await rlm.arun("growth", "bench context", notebook=path)
        if result.status != "answered" or len(stamps) != n:
            raise BenchFailed(f"the {n}-step run ended {result.status} after {len(stamps)} steps")
        records = read(path).steps
        steps = [b - a for a, b in itertools.pairwise(stamps)]
        own = [
            step - sum(c.exec.duration_s for c in records[k].code) - records[k + 1].latency_s
            for k, step in enumerate(steps)
        ]

        def ends(values: list[float]) -> tuple[float, float]:
            return statistics.median(values[:w]) * 1e3, statistics.median(values[-w:]) * 1e3

        early, late = ends(own)
        whole_early, whole_late = ends(steps)
        self.log(f"host time per step: steps 1-{w}: {early:.2f} ms, steps {n - w}-{n}: {late:.2f}")
        return [
            Figure(
                "notebook_growth",
                f"host time of step {n} (records, notebook write)",
                late,
                early,
                "ms",
                f"steps 1-{w}",
                f"≤ 1.2 × steps 1-{w}",
                late <= 1.2 * early,
                extra={"steps": n, "window": w, "host_ms": [round(x * 1e3, 3) for x in own]},
            ),
            Figure(
                "step_growth",
                f"whole step {n} (model, kernel, host)",
                whole_late,
                whole_early,
                "ms",
                f"steps 1-{w}",
                extra={"steps_ms": [round(x * 1e3, 3) for x in steps]},
            ),
        ]

    # -- sub-calls ----------------------------------------------------------------------------

    async def subcalls(self) -> list[Figure]:
        # Ours: one cell calls llm_query("p") `subcalls` times in a loop, three timed loops,
        # timed in the kernel (zero-latency sub-model over HTTP). Floor: the same number of
        # round trips over a kept Unix socket from the same kernel to an echo server on the
        # host's event loop (same framing and frame size), plus a bare SDK call to the sub-model.
        sock_dir = Path(tempfile.mkdtemp(prefix="rlmb-", dir="/tmp"))
        echo_path = str(sock_dir / "echo.sock")
        server = await asyncio.get_running_loop().create_unix_server(Echo, echo_path)
        n = self.plan.subcalls
        try:
            question = cell_question(bench_cell("round_trips", f"llm_query, {echo_path!r}, {n}, 3"))
            _, values = await self.run(question)
        finally:
            server.close()
            await server.wait_closed()
            shutil.rmtree(sock_dir, ignore_errors=True)
        sdk = statistics.median([await self.sdk.call(self.models.sub(0.0)) for _ in range(n)])
        # The sub-model called directly on the host, the way the run calls it (the provider a
        # run resolves, its default sub-call token cap), with no kernel, bridge or records.
        provider = resolve(f"openai:{self.models.sub(0.0)}")
        prompt = [{"role": "user", "content": "p"}]
        direct = []
        for _ in range(n):
            start = time.perf_counter()
            await provider.complete(prompt, max_tokens=Limits().sub_max_tokens)
            direct.append(time.perf_counter() - start)
        direct_us = statistics.median(direct) * 1e6
        ours = statistics.median(values["llm_query_us"])
        echo = statistics.median(values["echo_us"])
        floor = echo + sdk * 1e6
        self.log(f"llm_query: ours {ours:.0f} µs, floor {floor:.0f} µs (echo {echo:.0f} µs)")
        return [
            Figure(
                "subcall",
                "sequential sub-call round trip",
                ours,
                floor,
                "µs",
                "socket echo + SDK call",
                "≤ 1/5 × rlms",
                extra={
                    "reps_us": values["llm_query_us"],
                    "echo_us": values["echo_us"],
                    "sdk_call_us": round(sdk * 1e6, 1),
                    "direct_call_us": round(direct_us, 1),
                },
            ),
            # The same figure less one direct call of the model client each side uses (ours:
            # the provider; rlms: its OpenAIClient), so what is left is what each adds to the
            # call between the kernel's code and the client; the floor is the socket echo.
            Figure(
                "subcall_added",
                "sequential sub-call less a direct model call",
                ours - direct_us,
                echo,
                "µs",
                "socket echo",
            ),
        ]

    async def batched(self) -> list[Figure]:
        # Ours: one cell times llm_query_batched of per_slot × cap prompts, the sub-model
        # waiting `latency` before each reply, with RLM(max_concurrency=cap). Ideal: per_slot ×
        # latency. Floor: the same number of bare SDK calls under a semaphore of `cap`.
        figures = []
        for latency, cap in self.plan.batched:
            n = self.plan.per_slot * cap
            question = cell_question(bench_cell("batched", f"llm_query_batched, {n}, 'p'"))
            _, values = await self.run(question, sub_latency=latency, max_concurrency=cap)
            name = self.models.sub(latency)
            floor = await capped(n, cap, lambda name=name: self.sdk.call(name))
            # The server's share: the same calls as bare HTTP requests, no SDK.
            http = RawHttp(self.models.base_url, self.models.api_key)
            raw_http = await capped(n, cap, lambda name=name, http=http: http.call(name))
            await http.aclose()
            ideal = math.ceil(n / cap) * latency
            ours = values["batched_s"]
            self.log(
                f"batched {n} × {latency * 1e3:.0f} ms, cap {cap}: {ours:.3f} s "
                f"(SDK calls {floor:.3f} s, bare HTTP {raw_http:.3f} s, ideal {ideal:.3f} s)"
            )
            figures.append(
                Figure(
                    f"batched_{round(latency * 1e3)}ms_cap{cap}",
                    f"batched {n} × {latency * 1e3:.0f} ms, cap {cap}",
                    ours,
                    floor,
                    "s",
                    "SDK calls under the cap",
                    f"≤ 1.05 × ideal {ideal:.3f} s",
                    ours <= 1.05 * ideal,
                    extra={
                        "ideal_s": ideal,
                        "raw_http_s": round(raw_http, 4),
                        "prompts": n,
                        "cap": cap,
                        "latency_s": latency,
                    },
                )
            )
        return figures

    # -- context ------------------------------------------------------------------------------

    async def context(self) -> list[Figure]:
        # For each size, a seeded ASCII file (page cache warm for both sides). Ours: in a kept
        # kernel with the runtime loaded, `context = load_context(path)` timed on the host
        # around the execute (one round trip included) after the previous copy is freed.
        # Floor: open + mmap + decode of the same file in this process. Medians of three (one
        # above 100 MiB). The per-MiB times show whether the load is linear in size.
        figures = []
        per_mb: dict[int, float] = {}
        data = Path(tempfile.mkdtemp(prefix="rlmb-ctx-", dir="/tmp"))
        setup = runtime.bootstrap_code(
            runtime.__file__, address=None, token=None, context_path=None
        )
        try:
            async with KernelSession(shutdown_grace=0) as ks:
                await ks.execute(setup, silent=True, store_history=False)
                await ks.execute("from rlm_kernel_runtime import load_context as _load")
                for size in self.plan.sizes_mb:
                    path = data / f"{size}.txt"
                    write_ascii(path, size * MIB)
                    reps = 3 if size <= 100 else 1
                    floor = statistics.median(timed(lambda p=path: mmap_decode(p), reps))
                    times = []
                    for _ in range(reps):
                        await ks.execute("context = None")
                        start = time.perf_counter()
                        res = await ks.execute(f"context = _load({str(path)!r})", timeout=600)
                        times.append(time.perf_counter() - start)
                        if res.status != "ok":
                            raise BenchFailed(f"load_context failed: {render_text(res.outputs)}")
                    check = await ks.execute("print(len(context))")
                    if int(render_text(check.outputs).strip()) != size * MIB:
                        raise BenchFailed(f"the kernel's {size} MiB context has the wrong length")
                    await ks.execute("context = None")
                    path.unlink()
                    ours = statistics.median(times)
                    per_mb[size] = ours / size
                    self.log(
                        f"context {size} MiB: ours {ours * 1e3:.1f} ms, floor {floor * 1e3:.1f} ms"
                    )
                    figures.append(
                        Figure(
                            f"context_{size}mb",
                            f"context {size} MiB as a str in the kernel",
                            ours * 1e3,
                            floor * 1e3,
                            "ms",
                            "mmap decode",
                            "≤ 1/3 × rlms" if size == self.plan.memory_mb else "",
                            extra={"reps_s": times, "size_mib": size},
                        )
                    )
        finally:
            shutil.rmtree(data, ignore_errors=True)
        linear = [s for s in per_mb if s >= 10] or list(per_mb)
        small, big = min(linear), max(linear)
        figures.append(
            Figure(
                "context_linear",
                f"context load per MiB at {big} MiB",
                per_mb[big] * 1e3,
                per_mb[small] * 1e3,
                "ms",
                f"per MiB at {small} MiB",
                "≤ 1.5 × (linear in size)",
                per_mb[big] <= 1.5 * per_mb[small],
                extra={"ms_per_mib": {k: round(v * 1e3, 4) for k, v in per_mb.items()}},
            )
        )
        return figures

    async def memory(self) -> list[Figure]:
        # A fresh kernel given the run's bootstrap with a memory_mb ASCII file: the kernel's
        # VmRSS from /proc afterwards, against the context's size. The bootstrap is timed on
        # the host (information), and the host's context.prepare() (read, decode, sha256) too.
        size = self.plan.memory_mb
        data = Path(tempfile.mkdtemp(prefix="rlmb-mem-", dir="/tmp"))
        try:
            path = data / "context.txt"
            write_ascii(path, size * MIB)
            async with KernelSession(shutdown_grace=0) as ks:
                if ks.pid is None:
                    raise BenchFailed("the kernel's process id is not known")
                before = proc_rss_mib(ks.pid)
                setup = runtime.bootstrap_code(
                    runtime.__file__, address=None, token=None, context_path=str(path)
                )
                start = time.perf_counter()
                res = await ks.execute(setup, silent=True, store_history=False, timeout=600)
                boot = time.perf_counter() - start
                if res.status != "ok":
                    raise BenchFailed(f"bootstrap failed: {render_text(res.outputs)}")
                after = proc_rss_mib(ks.pid)
            prep = statistics.median(timed(lambda: prepare(path, data / "stem"), 2))
            floor = statistics.median(timed(lambda: mmap_decode(path), 3))
        finally:
            shutil.rmtree(data, ignore_errors=True)
        limit = 1.5 * size + 80
        rss = after["VmRSS"]
        self.log(f"kernel RSS with {size} MiB: {rss:.0f} MiB (before {before['VmRSS']:.0f} MiB)")
        return [
            Figure(
                "kernel_memory",
                f"kernel memory with a {size} MiB context",
                rss,
                float(size),
                "MiB",
                "the context",
                f"≤ 1.5 × context + 80 = {limit:.0f} MiB",
                rss <= limit,
                extra={"rss_before_mib": before["VmRSS"], "peak_mib": after["VmHWM"]},
            ),
            Figure(
                "context_bootstrap",
                f"{size} MiB context ready at kernel start",
                boot * 1e3,
                floor * 1e3,
                "ms",
                "mmap decode",
                extra={"host_prepare_ms": round(prep * 1e3, 2)},
            ),
        ]

    # -- start-up and children ----------------------------------------------------------------

    async def startup(self) -> list[Figure]:
        # Ours: a one-step run end to end (context, notebook, bridge, kernel start, the cell,
        # shutdown, final write), from the arun call to its result. Floor: a KernelSession's
        # start-up alone. Interleaved; medians.
        # The same run at the default max_depth=2 fills a pool of warm kernels for child runs
        # as it starts; it is given for information, beside the same floor.
        floors, ours, pooled = [], [], []
        for _ in range(self.plan.reps + 1):
            ks = KernelSession(shutdown_grace=0)
            start = time.perf_counter()
            await ks.start()
            floors.append(time.perf_counter() - start)
            await ks.shutdown()
            ours.append(await self.timed_run(steps_question(1)))
            pooled.append(await self.timed_run(steps_question(1), max_depth=2))
        o, f, p = statistics.median(ours), statistics.median(floors), statistics.median(pooled)
        self.log(f"one-step run {o:.3f} s ({p:.3f} s with the pool), kernel start-up {f:.3f} s")
        return [
            Figure(
                "startup",
                "one-step run end to end",
                o,
                f,
                "s",
                "kernel start-up",
                "≤ kernel start-up + 0.3 s",
                o <= f + 0.3,
                extra={"reps_s": ours, "floor_reps_s": floors},
            ),
            Figure(
                "startup_with_pool",
                "one-step run, default max_depth=2 (warm pool)",
                p,
                f,
                "s",
                "kernel start-up",
                extra={"reps_s": pooled, "floor_reps_s": floors},
            ),
        ]

    async def children(self) -> list[Figure]:
        # The root's cell that starts `children` child runs with one rlm_query_batched, against
        # the same cell starting one child with rlm_query (the floor), interleaved; each child's
        # model waits child_latency before each of its two replies; warm_kernels = children.
        # Durations are read from the root's notebook (exec.duration_s): what a user waits for.
        k, latency = self.plan.children, self.plan.child_latency

        async def model(messages: list[dict]) -> str:
            question = str(messages[1]["content"])
            replies = sum(m["role"] == "assistant" for m in messages)
            await asyncio.sleep(latency)
            if "bench child" in question:
                return block("n = len(context)") if replies == 0 else "FINAL_VAR(n)"
            if replies:
                return "FINAL_VAR(answers)"
            if question.endswith("one"):
                return block("answers = [rlm_query('bench child 0')]")
            prompts = [f"bench child {i}" for i in range(k)]
            return block(f"answers = rlm_query_batched({prompts!r})")

        async def cell_s(which: str) -> float:
            self._runs += 1
            notebook = self.work / f"tree-{self._runs}.ipynb"
            rlm = RLM(model, model, max_depth=2, warm_kernels=k, display=False)
            result = await rlm.arun(f"bench root {which}", "a small context", notebook=notebook)
            if result.status != "answered":
                raise BenchFailed(f"the run tree ended {result.status}: {result.error}")
            (cell,) = [c for c in read(notebook).code_cells if "rlm_query" in c.source]
            return float(cell.exec.duration_s)

        ones, many = [], []
        for _ in range(self.plan.reps):
            ones.append(await cell_s("one"))
            many.append(await cell_s("many"))
        o, f = statistics.median(many), statistics.median(ones)
        self.log(f"{k} children {o:.3f} s, one child {f:.3f} s")
        return [
            Figure(
                "children",
                f"{k} children in parallel",
                o,
                f,
                "s",
                "one child",
                "≤ 1.5 × one child",
                o <= 1.5 * f,
                extra={"reps_s": many, "floor_reps_s": ones, "model_s": 2 * latency},
            )
        ]

    async def aclose(self) -> None:
        """Close the floor's SDK client."""
        await self.sdk.aclose()
