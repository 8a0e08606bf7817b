"""A real JupyterLab server on 127.0.0.1 for browser tests, cut off from the user's Jupyter files.

Every directory Jupyter, IPython and JupyterLab read or write (home, config, data, runtime,
settings, workspaces, XDG) is a fresh folder under ``base``, so the server neither reads the
user's settings nor leaves anything behind, and its notebook-signing secret is its own. The port
is chosen by the operating system and read, with the token, from the server's runtime file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


@dataclass
class LabServer:
    """A running ``jupyter lab``.

    Attributes:
        url: the server's base URL, ending with ``/``.
        token: the token every request must carry.
        root_dir: the folder the server serves notebooks from.
        env: the environment the server runs in (its isolated Jupyter folders).
        data_dir: the server's ``JUPYTER_DATA_DIR``: its notebook-signing secret and database.
        log: the file holding the server's output.
    """

    url: str
    token: str
    root_dir: Path
    env: dict[str, str]
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes]

    def lab_url(self, path: str) -> str:
        """A URL opening ``path`` in a fresh workspace, so no saved layout gets in the way."""
        return (
            f"{self.url}lab/workspaces/{uuid.uuid4().hex[:12]}/tree/{path}?reset&token={self.token}"
        )

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's output, for failure messages."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def isolated_env(base: Path) -> dict[str, str]:
    """The current environment with every Jupyter, IPython and XDG folder moved under ``base``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTER", "JPY_", "IPYTHON", "XDG_"))
    }
    folders = {
        "HOME": "home",
        "JUPYTER_CONFIG_DIR": "jupyter/config",
        "JUPYTER_DATA_DIR": "jupyter/data",
        "JUPYTER_RUNTIME_DIR": "jupyter/runtime",
        "JUPYTERLAB_SETTINGS_DIR": "jupyter/lab/user-settings",
        "JUPYTERLAB_WORKSPACES_DIR": "jupyter/lab/workspaces",
        "IPYTHONDIR": "ipython",
        "XDG_CONFIG_HOME": "xdg/config",
        "XDG_DATA_HOME": "xdg/data",
        "XDG_CACHE_HOME": "xdg/cache",
        "XDG_RUNTIME_DIR": "xdg/runtime",
    }
    for name, rel in folders.items():
        folder = base / rel
        folder.mkdir(parents=True, exist_ok=True)
        env[name] = str(folder)
    (base / "xdg/runtime").chmod(0o700)
    return env


def write_settings(env: Mapping[str, str], settings: Mapping[str, Mapping[str, Any]]) -> None:
    """Write JupyterLab user settings: ``{"@scope/extension:plugin": {key: value}}``."""
    root = Path(env["JUPYTERLAB_SETTINGS_DIR"])
    for plugin_id, values in settings.items():
        extension, plugin = plugin_id.split(":", 1)
        target = root / extension / f"{plugin}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values, indent=2))


@contextlib.contextmanager
def jupyterlab(
    base: Path, root_dir: Path, *, settings: Mapping[str, Mapping[str, Any]] | None = None
) -> Iterator[LabServer]:
    """Run ``jupyter lab`` on 127.0.0.1 serving ``root_dir`` until the ``with`` block ends.

    Args:
        base: an empty folder for the server's isolated home, Jupyter folders and log.
        root_dir: the folder whose notebooks the server serves.
        settings: JupyterLab user settings to start with (see :func:`write_settings`).

    Raises:
        RuntimeError: the server did not answer within :data:`START_TIMEOUT_S`; the message
            holds the end of its log.
    """
    env = isolated_env(base)
    write_settings(env, settings or {})
    token = secrets.token_hex(16)
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port=0",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        # Nothing of the server's own reaches beyond this machine.
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = base / "jupyterlab.log"
    with log.open("wb") as out:
        # A session of its own: the server and the kernels it starts form one process group.
        process = subprocess.Popen(
            command,
            cwd=root_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = None
    try:
        url = _wait_until_ready(process, Path(env["JUPYTER_RUNTIME_DIR"]), token, log)
        server = LabServer(
            url=url,
            token=token,
            root_dir=root_dir,
            env=env,
            data_dir=Path(env["JUPYTER_DATA_DIR"]),
            log=log,
            process=process,
        )
        yield server
    finally:
        _stop(process)


def _wait_until_ready(
    process: subprocess.Popen[bytes], runtime: Path, token: str, log: Path
) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    info_file = runtime / f"jpserver-{process.pid}.json"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"jupyter lab exited with status {process.returncode}:\n"
                + log.read_text(errors="replace")[-4000:]
            )
        if info_file.exists():
            with contextlib.suppress(ValueError):  # the file may be half written
                info = json.loads(info_file.read_text())
                if info.get("token") != token:
                    raise RuntimeError(f"{info_file} does not hold the token the server was given")
                url = f"http://127.0.0.1:{info['port']}/"
                if _status_answers(url, token):
                    return url
        time.sleep(0.1)
    raise RuntimeError(
        f"jupyter lab did not answer within {START_TIMEOUT_S:.0f} s:\n"
        + log.read_text(errors="replace")[-4000:]
    )


def _status_answers(url: str, token: str) -> bool:
    request = urllib.request.Request(
        f"{url}api/status", headers={"Authorization": f"token {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate the server (it shuts its kernels down), then kill what is left of its group."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
    # Kernels the server could not shut down share its process group, led by its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
