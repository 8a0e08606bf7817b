"""KernelSession on real kernels: state, timeouts, death, secrets, and a clean exit every time."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rlm_kernel.errors import KernelError, KernelStartError
from rlm_kernel.kernel import KernelSession
from rlm_kernel.outputs import render_text

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

# Counts its runs in a file of the working directory, which outlives kernel restarts.
SETUP = "import os, sys, time\nwith open('setup-runs', 'a') as f:\n    f.write('x')"


def setup_runs(ks: KernelSession) -> int:
    return len((ks.cwd / "setup-runs").read_text())


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a process from /proc, or None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def is_running(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        stat = proc_stat(int(entry)) if entry.isdigit() else None
        if stat is not None and stat[2] == pgid and stat[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def our_children() -> list[int]:
    me = os.getpid()
    return [
        int(e)
        for e in os.listdir("/proc")
        if e.isdigit() and (stat := proc_stat(int(e))) and stat[1] == me and stat[0] != "Z"
    ]


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def assert_nothing_left(runtime_dir: Path, pid: int | None) -> None:
    assert not runtime_dir.exists()
    if pid is not None:
        assert wait_until(lambda: not is_running(pid)), f"kernel {pid} still running"
        assert wait_until(lambda: not group_members(pid)), "processes left in the kernel's group"
    assert pid not in our_children()


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def ks(loop):
    """One kernel shared by the tests that do not need a fresh one."""
    session = KernelSession(setup_code=SETUP, interrupt_grace=2.0)
    loop.run_until_complete(session.start())
    yield session
    loop.run_until_complete(session.shutdown())


@pytest.fixture
def run(loop, ks):
    def run(code: str, **kwargs):
        return loop.run_until_complete(ks.execute(code, **kwargs))

    return run


def test_state_is_kept_across_executes(run):
    first = run("counter = 41")
    second = run("counter += 1\ncounter")
    assert first.status == second.status == "ok"
    assert second.execution_count == first.execution_count + 1
    assert render_text(second.outputs) == "42\n"
    assert first.error is None and not first.restarted


def test_error_status_and_error_names(run):
    result = run("{}['missing']")
    assert result.status == "error"
    assert result.error == ("KeyError", "'missing'")
    assert run("1 + 1").status == "ok"  # an error does not abort what comes next


def test_ipc_transport_in_a_private_runtime_dir(ks):
    info = ks.connection_info
    assert info["transport"] == "ipc"
    assert "key" not in info
    assert Path(info["ip"]).parent == ks.runtime_dir
    assert len(f"{info['ip']}-{info['shell_port']}") < 100  # Unix socket path limit
    assert (ks.runtime_dir.stat().st_mode & 0o777) == 0o700
    connection = json.loads((ks.runtime_dir / "kernel.json").read_text())
    assert connection["transport"] == "ipc"
    for name in ("shell_port", "iopub_port", "control_port"):
        assert Path(f"{info['ip']}-{info[name]}").is_socket()


def test_cwd_and_ipython_dir_live_in_the_runtime_dir(run, ks):
    result = run("print(os.getcwd()); print(os.environ['IPYTHONDIR'])")
    cwd, ipython_dir = render_text(result.outputs).split()
    assert Path(cwd) == ks.runtime_dir / "work"
    assert Path(ipython_dir) == ks.runtime_dir / "ipython"


def test_on_output_sees_each_output_message_in_order(run):
    seen = []
    result = run(
        "print('a', flush=True); print('b', file=sys.stderr, flush=True); 3",
        on_output=lambda msg: seen.append(msg["header"]["msg_type"]),
    )
    assert seen == ["stream", "stream", "execute_result"]
    assert len(result.outputs) == 3


def test_silent_execution_publishes_no_result(run):
    before = run("1").execution_count
    silent = run("quiet = 5\nquiet", silent=True, store_history=False)
    assert silent.outputs == []
    assert run("quiet").execution_count == before + 1


def test_timeout_interrupts_and_keeps_variables(run):
    run("kept = 'still here'")
    started = time.monotonic()
    result = run("print('looping', flush=True)\nwhile True: pass", timeout=0.5)
    assert result.status == "timeout"
    assert not result.restarted
    assert result.error[0] == "TimeoutError"
    assert "0.5 s" in result.error[1]
    assert 0.5 <= time.monotonic() - started < 2.0
    text = render_text(result.outputs)
    assert text.startswith("looping\n") and "KeyboardInterrupt" in text
    assert render_text(run("kept").outputs) == "'still here'\n"


def test_a_kernel_that_ignores_the_interrupt_is_restarted(run, ks):
    runs_before = setup_runs(ks)
    run("doomed = 1")
    ks.interrupt_grace = 0.3
    try:
        result = run(
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
            timeout=0.3,
        )
    finally:
        ks.interrupt_grace = 2.0
    assert result.status == "timeout"
    assert result.restarted
    assert "restarted" in result.error[1]
    assert setup_runs(ks) == runs_before + 1
    assert render_text(run("'doomed' in globals(), 'time' in globals()").outputs) == (
        "(False, True)\n"
    )


def test_kernel_death_is_reported_and_the_kernel_restarted(run, ks):
    runs_before = setup_runs(ks)
    old_pid = ks.pid
    run("lost = 1")
    started = time.monotonic()
    result = run("print('going', flush=True); time.sleep(0.2); os._exit(3)")
    assert time.monotonic() - started < 3.0
    assert result.status == "kernel_died"
    assert result.restarted
    assert result.error[0] == "DeadKernelError"
    assert "exited with code 3" in result.error[1]
    assert render_text(result.outputs) == "going\n"
    assert ks.pid != old_pid and not is_running(old_pid)
    assert setup_runs(ks) == runs_before + 1
    assert render_text(run("'lost' in globals(), 'time' in globals()").outputs) == (
        "(False, True)\n"
    )


def test_kernel_killed_between_cells(run, ks):
    old_pid = ks.pid
    os.kill(old_pid, signal.SIGKILL)
    result = run("1")
    assert result.status == "kernel_died"
    assert "SIGKILL" in result.error[1]
    assert run("'alive'").status == "ok"


def test_restart_gives_a_fresh_kernel_with_setup_code(run, ks, loop):
    runs_before = setup_runs(ks)
    run("temporary = 1")
    old_pid = ks.pid
    loop.run_until_complete(ks.restart())
    assert ks.pid != old_pid and not is_running(old_pid)
    assert setup_runs(ks) == runs_before + 1
    assert render_text(run("'temporary' in globals(), 'time' in globals()").outputs) == (
        "(False, True)\n"
    )


SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-secret",
    "OPENAI_API_KEY": "sk-secret",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "GITHUB_TOKEN": "ghp_secret",
    "MY_PASSWORD": "hunter2",
}


def test_secrets_never_reach_the_kernel(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RLM_TEST_ALLOWED", "passed through")
    monkeypatch.setenv("LC_RLM_TEST", "locale")

    async def main():
        async with KernelSession(
            env_allowlist=["RLM_TEST_ALLOWED"], env={"RLM_EXPLICIT": "set"}
        ) as ks:
            result = await ks.execute("import os, json; print(json.dumps(dict(os.environ)))")
            return json.loads(render_text(result.outputs))

    env = asyncio.run(main())
    for name, value in SECRETS.items():
        assert name not in env
        assert value not in env.values()
    assert env["RLM_TEST_ALLOWED"] == "passed through"
    assert env["LC_RLM_TEST"] == "locale"
    assert env["RLM_EXPLICIT"] == "set"
    assert env["PATH"] == os.environ["PATH"]
    assert env["PYDEVD_DISABLE_FILE_VALIDATION"] == "1"


def test_shutdown_leaves_nothing_and_kills_spawned_processes():
    async def main():
        ks = KernelSession()
        await ks.start()
        result = await ks.execute(
            "import subprocess\np = subprocess.Popen(['sleep', '1000'])\nprint(p.pid)"
        )
        sleeper = int(render_text(result.outputs))
        assert is_running(sleeper)
        pid, runtime_dir = ks.pid, ks.runtime_dir
        started = time.monotonic()
        await ks.shutdown()
        elapsed = time.monotonic() - started
        await ks.shutdown()  # idempotent
        return pid, runtime_dir, sleeper, elapsed

    pid, runtime_dir, sleeper, elapsed = asyncio.run(main())
    assert_nothing_left(runtime_dir, pid)
    assert wait_until(lambda: not is_running(sleeper))
    assert elapsed < 1.0


def test_async_with_cleans_up_when_the_body_raises():
    seen = {}

    async def main():
        async with KernelSession() as ks:
            seen.update(pid=ks.pid, runtime_dir=ks.runtime_dir)
            raise LookupError("body failed")

    with pytest.raises(LookupError, match="body failed"):
        asyncio.run(main())
    assert_nothing_left(seen["runtime_dir"], seen["pid"])


def test_cancelling_a_running_cell_cleans_up():
    seen = {}

    async def body():
        async with KernelSession() as ks:
            seen.update(pid=ks.pid, runtime_dir=ks.runtime_dir)
            await ks.execute("import time\ntime.sleep(100)")

    async def main():
        task = asyncio.create_task(body())
        deadline = time.monotonic() + 60
        while "pid" not in seen and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the cell is running now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert_nothing_left(seen["runtime_dir"], seen["pid"])


HOST_SCRIPT = """
import asyncio, json, os, signal, sys
from rlm_kernel.kernel import KernelSession

async def report(ks):
    result = await ks.execute("import subprocess; print(subprocess.Popen(['sleep', '1000']).pid)")
    sleeper = int(result.outputs[0]["text"])
    print(json.dumps({"pid": ks.pid, "dir": str(ks.runtime_dir), "sleeper": sleeper}), flush=True)

async def ctrl_c():
    async with KernelSession() as ks:
        await report(ks)
        asyncio.get_running_loop().call_later(0.3, os.kill, os.getpid(), signal.SIGINT)
        await ks.execute("import time; time.sleep(100)")

async def leave_open():
    ks = KernelSession()
    await ks.start()
    await report(ks)  # returns with the session open: the atexit safety net must act

asyncio.run(ctrl_c() if sys.argv[1] == "ctrl-c" else leave_open())
"""


@pytest.mark.parametrize("mode", ["ctrl-c", "exit-without-shutdown"])
def test_host_exit_leaves_nothing(mode, tmp_path):
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(HOST_SCRIPT))
    proc = subprocess.run(
        [sys.executable, str(script), mode], capture_output=True, text=True, timeout=60
    )
    info = json.loads(proc.stdout.splitlines()[0])
    if mode == "ctrl-c":
        assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
    assert not Path(info["dir"]).exists()
    assert wait_until(lambda: not is_running(info["pid"]))
    assert wait_until(lambda: not is_running(info["sleeper"]))


def test_closed_and_unstarted_sessions_say_so(loop):
    ks = KernelSession()
    with pytest.raises(KernelError, match="not started"):
        loop.run_until_complete(ks.execute("1"))
    loop.run_until_complete(ks.shutdown())
    assert not ks.runtime_dir.exists()
    with pytest.raises(KernelError, match=r"^this kernel session is closed$"):
        loop.run_until_complete(ks.execute("1"))
    with pytest.raises(KernelError, match=r"^this kernel session is closed$"):
        loop.run_until_complete(ks.start())


def test_failing_setup_code_raises_with_the_error_text(loop):
    ks = KernelSession(setup_code="import no_such_module_here")
    with pytest.raises(KernelStartError, match=r"ModuleNotFoundError.*no_such_module_here"):
        loop.run_until_complete(ks.start())
    assert not ks.runtime_dir.exists()
    with pytest.raises(KernelError, match="closed"):
        loop.run_until_complete(ks.execute("1"))


def test_unknown_kernel_name_raises_a_clear_error(loop):
    ks = KernelSession(kernel_name="no-such-kernel")
    with pytest.raises(KernelStartError, match="could not start the 'no-such-kernel' kernel"):
        loop.run_until_complete(ks.start())
    assert not ks.runtime_dir.exists()


def test_a_zero_shutdown_grace_kills_the_kernel_and_cleans_up():
    async def main():
        ks = KernelSession(shutdown_grace=0)
        await ks.start()
        assert (await ks.execute("x = 1")).status == "ok"
        pid, runtime_dir = ks.pid, ks.runtime_dir
        await ks.shutdown()
        return pid, runtime_dir

    pid, runtime_dir = asyncio.run(main())
    assert not Path(f"/proc/{pid}").exists()
    assert not runtime_dir.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")
def test_the_kernel_cannot_read_the_hosts_environment(monkeypatch):
    import ctypes

    monkeypatch.setenv("MY_HOST_SECRET", "s3cr3t-value")

    async def main():
        async with KernelSession() as ks:
            code = (
                "import os\n"
                "try:\n"
                "    data = open(f'/proc/{os.getppid()}/environ', 'rb').read()\n"
                "    print('s3cr3t-value' in data.decode(errors='replace'))\n"
                "except OSError as e:\n"
                "    print('refused', type(e).__name__)\n"
            )
            return (await ks.execute(code)).outputs[0]["text"]

    seen = asyncio.run(main())
    assert ctypes.CDLL(None).prctl(3, 0, 0, 0, 0) == 0  # PR_GET_DUMPABLE: the host is protected
    if os.geteuid() != 0:  # root may read any process's memory; nothing in user space stops it
        assert seen.startswith("refused"), seen
