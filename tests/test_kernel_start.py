"""A kernel start honours its deadline: a kernel that never becomes ready fails in time, cleanly."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from test_kernel import assert_nothing_left, wait_until

from rlm_kernel.errors import KernelStartError
from rlm_kernel.kernel import KernelSession

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

# A "kernel" that starts, writes its pid and then never answers: what a kernel stuck importing
# a broken package, or waiting on a network file system, looks like from the host.
SILENT = "import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(600)"


@pytest.fixture
def silent_kernel(tmp_path, monkeypatch):
    """The name of a kernelspec whose process never becomes ready, and its pid file."""
    spec = tmp_path / "jupyter" / "kernels" / "silent"
    spec.mkdir(parents=True)
    pid_file = tmp_path / "silent.pid"
    argv = [sys.executable, "-c", SILENT, str(pid_file), "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "silent", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "silent", pid_file


def test_a_kernel_that_never_becomes_ready_fails_within_the_start_timeout(silent_kernel):
    name, pid_file = silent_kernel
    ks = KernelSession(kernel_name=name, startup_timeout=1.5)
    with pytest.raises(KernelStartError, match=r"'silent' kernel did not start within 1.5 s"):
        asyncio.run(ks.start())
    assert wait_until(pid_file.exists)
    assert_nothing_left(ks.runtime_dir, int(pid_file.read_text()))


def test_setup_code_that_hangs_counts_against_the_same_deadline():
    ks = KernelSession(setup_code="import time\ntime.sleep(600)", startup_timeout=3)
    with pytest.raises(KernelStartError) as info:
        asyncio.run(ks.start())
    assert "3 s" in str(info.value)
    assert not ks.runtime_dir.exists()


def test_a_run_whose_time_runs_out_while_its_kernel_starts_ends_on_its_time_limit(
    silent_kernel, tmp_path
):
    from rlm_kernel import RLM

    async def never_asked(messages):
        raise AssertionError("the model is not asked before the kernel is ready")

    name, pid_file = silent_kernel
    rlm = RLM(never_asked, never_asked, kernel_name=name, timeout=1.5, max_depth=1, display=False)
    result = rlm.run("q", context="ctx", notebook=tmp_path / "run.ipynb")
    assert (result.status, result.stop_reason) == ("no_answer", "timeout")
    assert result.error.startswith("the run's time limit of 1.5 s ran out: ")
    assert "kernel did not start within" in result.error
    meta = json.loads((tmp_path / "run.ipynb").read_text())["metadata"]["rlm"]
    assert (meta["status"], meta["stop_reason"]) == ("no_answer", "timeout")
    assert wait_until(pid_file.exists)
