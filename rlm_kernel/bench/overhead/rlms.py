"""``--compare rlms``: the reference implementation, in a virtual environment of its own.

``rlms`` (PyPI; the paper authors' implementation) is never a dependency of rlm-kernel. The
first ``--compare rlms`` creates a virtual environment (``~/.cache/rlm-kernel/rlms-venv``, or
under ``$XDG_CACHE_HOME``), installs ``rlms[ipython]`` into it from PyPI and marks it ready;
later runs reuse it. ``_rlms_driver.py`` then runs there, driven with a JSON job on stdin, and
measures rlms' ``ipython`` environment against the same model server and the same cells.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlm_kernel.errors import RLMKernelError

from .floors import write_ascii
from .models import BenchModels, steps_question
from .ours import bench_cell
from .plan import Plan
from .report import MIB, Figure

DRIVER = Path(__file__).resolve().with_name("_rlms_driver.py")
REQUIREMENT = "rlms[ipython]"
MODES = ("subprocess", "in_process")
_READY = "rlms-ready.json"
_INSTALL_TIMEOUT_S = 1800
_RUN_TIMEOUT_S = 3600
# Targets relative to rlms, by figure key: ours must be at most this fraction of rlms' value.
TARGETS = {"per_step": 1 / 2, "subcall": 1 / 5}


class ReferenceUnavailable(RLMKernelError, RuntimeError):
    """The reference implementation's environment cannot be built or run."""


def default_venv() -> Path:
    """Where the rlms environment is kept: the user's cache folder."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "rlm-kernel" / "rlms-venv"


def venv_python(venv: Path) -> Path:
    """The interpreter of a virtual environment."""
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(venv: Path, python: str, log: Callable[[str], None]) -> Path:
    """The rlms environment's interpreter, building the environment first if needed.

    Args:
        venv: the environment's folder (reused when it is marked ready).
        python: the interpreter that creates it (rlms needs Python 3.11 or later).
        log: progress lines.

    Raises:
        ReferenceUnavailable: no such interpreter, or the environment or the install failed
            (no network, say); a half-built environment is removed.
    """
    py = venv_python(venv)
    probe = "import rlm, ipykernel, jupyter_client; from rlm.environments import IPythonREPL"
    if py.is_file() and not (venv / _READY).is_file():
        try:
            _step([str(py), "-c", probe], "import rlms", 120)
            (venv / _READY).write_text(json.dumps({"requirement": REQUIREMENT}) + "\n")
        except ReferenceUnavailable:
            pass  # not a usable rlms environment: build it again below
    if (venv / _READY).is_file() and py.is_file():
        return py
    if shutil.which(python) is None:
        raise ReferenceUnavailable(
            f"cannot build the rlms environment: no Python interpreter {python!r} "
            "(give one with --rlms-python; rlms needs Python >= 3.11)"
        )
    log(f"building the rlms environment in {venv} (pip install {REQUIREMENT}) ...")
    shutil.rmtree(venv, ignore_errors=True)
    try:
        _step([python, "-m", "venv", str(venv)], "create a virtual environment", 300)
        _step(
            [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", REQUIREMENT],
            f"install {REQUIREMENT} from PyPI (no network?)",
            _INSTALL_TIMEOUT_S,
        )
        _step([str(py), "-c", probe], "import rlms in its environment", 120)
    except ReferenceUnavailable:
        shutil.rmtree(venv, ignore_errors=True)
        raise
    (venv / _READY).write_text(json.dumps({"requirement": REQUIREMENT}) + "\n")
    return py


def _step(cmd: list[str], what: str, timeout: float) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReferenceUnavailable(f"cannot {what}: {exc}") from None
    if done.returncode != 0:
        raise ReferenceUnavailable(f"cannot {what}: {_last_line(done.stderr or done.stdout)}")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # pip prefixes the line that says what went wrong with ERROR:; prefer it to warnings.
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1][:300]


def job(models: BenchModels, plan: Plan, files: dict[int, Path]) -> dict[str, Any]:
    """The driver's job: the server, the plan, and the cells and files prepared for it."""
    sub0 = models.sub(0.0)
    batched = []
    for latency, cap in plan.batched:
        n = plan.per_slot * cap
        batched.append(
            {
                "key": f"batched_{round(latency * 1e3)}ms_cap{cap}",
                "cap": cap,
                "sub": models.sub(latency),
                "cell": bench_cell("batched", f"llm_query_batched, {n}, 'p'"),
            }
        )
    out: dict[str, Any] = {
        "base_url": models.base_url,
        "root": "bench-root",
        "sub0": sub0,
        "plan": plan.to_dict(),
        "parts": list(plan.parts),
        "modes": list(MODES),
        "steps_questions": [steps_question(plan.steps), steps_question(1)],
        "subcall_cell": bench_cell("query_loop", f"llm_query, {plan.subcalls}, 3"),
        "batched": batched,
    }
    if files:
        out["context_files"] = [[size, str(path)] for size, path in sorted(files.items())]
    return out


def measure(
    models: BenchModels, plan: Plan, python: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Run the driver in the rlms environment; its figures by mode.

    Raises:
        ReferenceUnavailable: the driver failed or gave no result.
    """
    sizes = set(plan.sizes_mb) if "context" in plan.parts else set()
    if "memory" in plan.parts:
        sizes.add(plan.memory_mb)
    with tempfile.TemporaryDirectory(prefix="rlmb-rlms-") as tmp:
        files = {}
        for size in sorted(sizes):
            files[size] = Path(tmp) / f"context-{size}.txt"
            write_ascii(files[size], size * MIB)
        # A clean environment: rlms reads a .env file of the working folder at import, so it
        # runs in an empty folder, and it gets the fake server's key and nothing else secret.
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        env["OPENAI_API_KEY"] = models.api_key
        work = Path(tmp) / "work"
        work.mkdir()
        try:
            done = subprocess.run(
                [str(python), str(DRIVER)],
                input=json.dumps(job(models, plan, files)),
                stdout=subprocess.PIPE,
                stderr=None if os.environ.get("RLM_BENCH_VERBOSE") else subprocess.PIPE,
                text=True,
                cwd=work,
                env=env,
                timeout=_RUN_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ReferenceUnavailable(f"the rlms driver did not finish: {exc}") from None
    for line in done.stdout.splitlines():
        if line.startswith("RLMS-RESULT "):
            return json.loads(line[len("RLMS-RESULT ") :])
    raise ReferenceUnavailable(
        f"the rlms driver failed (exit {done.returncode}): {_last_line(done.stderr or '')}"
    )


def attach(figures: list[Figure], result: dict[str, Any], plan: Plan) -> None:
    """Put rlms' values beside ours and settle the targets that are relative to rlms."""
    modes = result.get("modes", {})
    kernel, in_process = modes.get("subprocess", {}), modes.get("in_process", {})
    for f in figures:
        f.rlms = kernel.get(f.key)
        f.rlms_in_process = in_process.get(f.key)
        fraction = TARGETS.get(f.key)
        if f.key == f"context_{plan.memory_mb}mb":
            fraction = 1 / 3
        if fraction is not None and f.rlms:
            f.ok = f.ours <= fraction * f.rlms
