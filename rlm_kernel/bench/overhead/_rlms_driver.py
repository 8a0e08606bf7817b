"""Drive the reference implementation (``rlms``) through the overhead suite's measurements.

Runs in the separate virtual environment that ``--compare rlms`` builds, with the Python of
that environment: it imports ``rlm`` (the ``rlms`` package) and the standard library, nothing
of rlm-kernel. It reads one JSON job from stdin (the model server's URL, the plan, the cells to
run and the context files, all prepared by the host), runs every part in each kernel mode of
rlms' ``ipython`` environment (``subprocess``: a Jupyter kernel; ``in_process``: an IPython
shell in this process), and prints one line ``RLMS-RESULT {json}`` on stdout.

The root model and the sub-models are the ones rlm-kernel's figures use, served by the host's
fake model server and reached through rlms' own OpenAI client, so both sides pay the same
model calls.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import time
from typing import Any

RESULT = "RLMS-RESULT "


def bench_values(text: str) -> dict[str, Any]:
    """The ``BENCH {json}`` lines a cell printed."""
    values = {}
    for line in text.splitlines():
        if line.startswith("BENCH "):
            item = json.loads(line[6:])
            values[item["name"]] = item["value"]
    return values


class Driver:
    """One job: the server's coordinates, the plan and the prepared cells and files."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.plan = job["plan"]
        self.url = job["base_url"]
        self.key = os.environ["OPENAI_API_KEY"]

    def client(self, model: str) -> Any:
        from rlm.clients.openai import OpenAIClient

        return OpenAIClient(api_key=self.key, model_name=model, base_url=self.url)

    def env(self, mode: str, address: Any = None) -> Any:
        from rlm.environments.ipython_repl import IPythonREPL

        return IPythonREPL(lm_handler_address=address, kernel_mode=mode, cell_timeout=600)

    def completion(self, mode: str, question: str, steps: int) -> tuple[float, list[float]]:
        """Seconds of one ``RLM.completion`` whose root runs ``steps`` steps, and its steps'."""
        from rlm import RLM
        from rlm.logger import RLMLogger

        stamps: list[float] = []

        class StampLogger(RLMLogger):
            # Called once per iteration, after it: the time between two calls is a whole step,
            # as rlm-kernel's on_step hook gives it.
            def log(self, iteration: Any) -> None:
                stamps.append(time.perf_counter())
                super().log(iteration)

        rlm = RLM(
            backend="openai",
            backend_kwargs={
                "model_name": self.job["root"],
                "base_url": self.url,
                "api_key": self.key,
            },
            environment="ipython",
            environment_kwargs={"kernel_mode": mode, "cell_timeout": 600},
            max_iterations=steps + 3,
            logger=StampLogger(),
        )
        start = time.perf_counter()
        result = rlm.completion("bench context", root_prompt=question)
        elapsed = time.perf_counter() - start
        if result.response != "done":
            raise RuntimeError(f"rlms ({mode}) answered {result.response!r}, expected 'done'")
        return elapsed, [b - a for a, b in itertools.pairwise(stamps)]

    def cell(self, mode: str, code: str, sub_model: str, cap: int = 16) -> dict[str, Any]:
        """Run ``code`` in a fresh environment wired to ``sub_model``; its ``BENCH`` values."""
        from rlm.core.lm_handler import LMHandler

        handler = LMHandler(self.client(sub_model), batch_max_concurrent=cap)
        handler.start()
        env = self.env(mode, handler.address)
        try:
            result = env.execute_code(code)
        finally:
            env.cleanup()
            handler.stop()
        values = bench_values(result.stdout)
        if not values:
            raise RuntimeError(f"rlms ({mode}) cell printed no result: {result.stderr[-500:]}")
        return values

    def steps(self, mode: str) -> dict[str, Any]:
        steps: list[float] = []
        for _ in range(self.plan["reps"]):
            steps += self.completion(mode, self.job["steps_questions"][0], self.plan["steps"])[1]
        return {"per_step": statistics.median(steps) * 1e3, "per_step_steps_s": steps}

    def startup(self, mode: str) -> dict[str, Any]:
        times = [
            self.completion(mode, self.job["steps_questions"][1], 1)[0]
            for _ in range(self.plan["reps"] + 1)
        ]
        return {"startup": statistics.median(times), "startup_reps_s": times}

    def subcalls(self, mode: str) -> dict[str, Any]:
        values = self.cell(mode, self.job["subcall_cell"], self.job["sub0"])
        figure = statistics.median(values["llm_query_us"])
        # What rlms adds to the model call: the same figure less a bare call of the client its
        # handler calls, timed here, in rlms' own environment.
        client = self.client(self.job["sub0"])
        bare = []
        for _ in range(self.plan["subcalls"]):
            start = time.perf_counter()
            client.completion("p")
            bare.append((time.perf_counter() - start) * 1e6)
        return {
            "subcall": figure,
            "subcall_added": figure - statistics.median(bare),
            "subcall_reps_us": values,
            "subcall_client_us": statistics.median(bare),
        }

    def batched(self, mode: str) -> dict[str, Any]:
        out = {}
        for item in self.job["batched"]:
            values = self.cell(mode, item["cell"], item["sub"], cap=item["cap"])
            out[item["key"]] = values["batched_s"]
        return out

    def context(self, mode: str) -> dict[str, Any]:
        # rlms takes the context as a value: load_context writes it to a file in the
        # environment's folder and the kernel reads it back. The str is read from the host's
        # file beforehand, untimed; the load is timed around load_context.
        out: dict[str, Any] = {}
        env = self.env(mode)
        try:
            for size, path in self.job["context_files"]:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                times = []
                for _ in range(3 if size <= 100 else 1):
                    env.execute_code("context = context_0 = None")
                    start = time.perf_counter()
                    env.load_context(text)
                    times.append(time.perf_counter() - start)
                del text
                out[f"context_{size}mb"] = statistics.median(times) * 1e3
                if size == self.plan["memory_mb"] and mode == "subprocess":
                    out["kernel_memory"] = rss_mib(kernel_pid(env))
                env.execute_code("context = context_0 = None")
        finally:
            env.cleanup()
        return out


def kernel_pid(env: Any) -> int:
    """The process id of a subprocess-mode environment's kernel."""
    provisioner = env._km.provisioner
    pid = getattr(provisioner, "pid", None) or provisioner.process.pid
    return int(pid)


def rss_mib(pid: int) -> float:
    """``VmRSS`` of a process in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def main() -> int:
    """Read the job from stdin, run it, print the result line."""
    job = json.load(sys.stdin)
    driver = Driver(job)
    from importlib.metadata import version

    result: dict[str, Any] = {"version": version("rlms"), "modes": {}}
    for mode in job["modes"]:
        figures: dict[str, Any] = {}
        parts = [p for p in job["parts"] if p != "memory"]
        if "memory" in job["parts"] and "context" not in parts:
            parts.append("context")  # the kernel's memory is read after its context load
        for part in parts:
            measure = getattr(driver, part, None)
            if measure is not None and not (part == "context" and "context_files" not in job):
                print(f"rlms {mode}: {part}", file=sys.stderr, flush=True)
                figures.update(measure(mode))
        result["modes"][mode] = figures
    print(RESULT + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
