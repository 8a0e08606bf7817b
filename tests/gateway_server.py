"""A real Jupyter Kernel Gateway on 127.0.0.1 with an auth token, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MISSING = (
    "jupyter-kernel-gateway is not installed: pip install 'rlm-kernel[test]' "
    "(it brings the gateway the gateway tests start on 127.0.0.1)"
)


def installed() -> bool:
    return importlib.util.find_spec("kernel_gateway") is not None


@dataclass
class RunningGateway:
    url: str
    token: str
    workdir: Path
    process: subprocess.Popen

    def kernels(self) -> list[dict]:
        """The kernels the gateway runs, asked through its REST API."""
        request = urllib.request.Request(
            self.url + "/api/kernels", headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def kernel_gateway(startup_timeout: float = 60.0) -> Iterator[RunningGateway]:
    """Start ``jupyter-kernelgateway`` with a token; stop it and its kernels afterwards.

    Its environment holds no model credentials, as a gateway's should not.
    """
    token = secrets.token_urlsafe(16)
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="rlm-kg-"))
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TMPDIR", "SYSTEMROOT")}
    env.update(HOME=str(workdir), JUPYTER_RUNTIME_DIR=str(workdir / "runtime"))
    command = [
        sys.executable,
        "-m",
        "kernel_gateway",
        "--KernelGatewayApp.ip=127.0.0.1",
        f"--KernelGatewayApp.port={port}",
        "--KernelGatewayApp.port_retries=0",
        f"--KernelGatewayApp.auth_token={token}",
        "--JupyterWebsocketPersonality.list_kernels=True",
    ]
    log = open(workdir / "gateway.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=log, stderr=log, start_new_session=True
    )
    gateway = RunningGateway(f"http://127.0.0.1:{port}", token, workdir, process)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    "the kernel gateway exited: " + (workdir / "gateway.log").read_text()[-2000:]
                )
            try:
                gateway.kernels()
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise RuntimeError("the kernel gateway did not start in time") from None
                time.sleep(0.1)
        yield gateway
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
