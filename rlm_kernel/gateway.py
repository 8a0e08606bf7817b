"""Kernels on a Jupyter Kernel Gateway or Enterprise Gateway, behind the same session shape.

``Gateway`` holds where the gateway is and how to reach it; called with ``setup_code=`` it
returns a :class:`GatewaySession`, the remote twin of :class:`~rlm_kernel.kernel.KernelSession`:
``async with``, ``execute(code, *, timeout, collector)`` returning an
:class:`~rlm_kernel.kernel.ExecResult`, timeouts that interrupt, a dead or hung kernel replaced
by a fresh one with its files and setup code again, nothing left on the gateway afterwards.

A remote kernel cannot read the host's files nor reach a Unix socket, so:

- files it needs (the in-kernel runtime, the context) travel once through the kernel's own
  channels, in 1 MiB binary chunks with a fixed window, checked by SHA-256 on arrival and
  written to a private directory on the kernel's disk, where the runtime memory-maps the
  context as it does locally (``rlm_kernel.upload`` is the kernel's side);
- sub-calls use the bridge's token-authenticated TCP listener, which the kernel dials:
  ``Gateway.bridge_host`` is the interface the host listens on, ``Gateway.bridge_address``
  the host name kernels use to reach it.

Usage::

    gateway = Gateway("http://127.0.0.1:8888", token="...")
    async with gateway.bootstrap(address=bridge.address, token=bridge.token,
                                 context_path="ctx.txt", context_kind="text") as ks:
        result = await ks.execute("print(len(context))", timeout=30)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from . import runtime, upload
from .gateway_session import GatewaySession
from .gateway_wire import GatewayAuthError, GatewayError, Rest, public_url

__all__ = ["Gateway", "GatewayAuthError", "GatewayError", "GatewaySession"]

URL_ENV = "JUPYTER_GATEWAY_URL"
TOKEN_ENV = "JUPYTER_GATEWAY_AUTH_TOKEN"
RUNTIME_NAME = "rlm_runtime.py"
CONTEXT_NAME = "context"


class Gateway:
    """A Jupyter Kernel Gateway or Enterprise Gateway that runs each run's kernel.

    Pass it as ``RLM(session=Gateway(...))``: it is the session factory.

    Args:
        url: the gateway's base URL; ``None`` reads ``JUPYTER_GATEWAY_URL``.
        token: its auth token; ``None`` reads ``JUPYTER_GATEWAY_AUTH_TOKEN`` (may be unset for
            a gateway without a token). It is sent in the ``Authorization`` header only.
        kernel_name: the kernelspec to start on the gateway.
        env: variables for the kernel, sent with the start request. Gateways pass only
            ``KERNEL_*`` names (and ones they allow by configuration), e.g.
            ``KERNEL_NAMESPACE`` or ``KERNEL_USERNAME`` on Enterprise Gateway.
        bridge_host: the interface the host's sub-call listener binds (``0.0.0.0`` for kernels
            on other machines).
        bridge_address: the host name or IP kernels dial to reach that listener (default:
            ``bridge_host``).
        startup_timeout: seconds a kernel may take to start and run its setup (a Kubernetes
            pod may need to pull an image).
        request_timeout: seconds for each REST request.
        validate_cert: check the gateway's TLS certificate.
    """

    bridge = "tcp"

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        kernel_name: str = "python3",
        env: Mapping[str, str] | None = None,
        bridge_host: str = "127.0.0.1",
        bridge_address: str | None = None,
        startup_timeout: float = 120.0,
        request_timeout: float = 30.0,
        validate_cert: bool = True,
    ) -> None:
        url = url or os.environ.get(URL_ENV)
        if not url:
            raise GatewayError(f"no gateway URL: pass one or set {URL_ENV}")
        if not url.startswith(("http://", "https://")):
            raise GatewayError(f"the gateway URL must start with http:// or https://: {url}")
        self.url = url.rstrip("/")
        self._token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.kernel_name = kernel_name
        self.env = dict(env or {})
        self.bridge_host = bridge_host
        self.bridge_address = bridge_address or bridge_host
        self.startup_timeout = startup_timeout
        self.request_timeout = request_timeout
        self.validate_cert = validate_cert

    def __repr__(self) -> str:
        return f"Gateway({public_url(self.url)!r}, kernel_name={self.kernel_name!r})"

    def rest(self) -> Rest:
        """A REST client for this gateway (close it after use)."""
        return Rest(
            self.url, self._token, timeout=self.request_timeout, validate_cert=self.validate_cert
        )

    def record(self) -> dict[str, Any]:
        """What a run notebook records about where its kernel ran (never the token)."""
        return {"type": "gateway", "url": public_url(self.url), "kernel_name": self.kernel_name}

    def advertise(self, address: str) -> str:
        """The bridge address kernels dial: ``tcp:<bridge_address>:<port>`` for a TCP listener."""
        if not address.startswith("tcp:"):
            raise GatewayError(f"a kernel on a gateway needs a TCP bridge, not {address}")
        port = address.rsplit(":", 1)[1]
        return f"tcp:{self.bridge_address}:{port}"

    def __call__(
        self,
        *,
        setup_code: str | None = None,
        files: Mapping[str, str | os.PathLike[str]] | None = None,
    ) -> GatewaySession:
        """A session whose kernel receives ``files`` (by name) and then runs ``setup_code``."""
        return GatewaySession(self, setup_code=setup_code, files=files)

    def bootstrap(
        self,
        *,
        address: str,
        token: str,
        context_path: str | os.PathLike[str] | None,
        context_kind: str = "text",
        extra_setup: str = "",
    ) -> GatewaySession:
        """A session set up as a run's REPL: runtime and context uploaded, bridge over TCP.

        Args:
            address: the bridge's listening address (``BridgeServer.address``, TCP).
            token: the bridge's token.
            context_path: the run's context file on the host.
            context_kind: ``"text"`` or ``"json"``.
            extra_setup: code to run after the runtime's (the host tools' functions).
        """
        files: dict[str, str | os.PathLike[str]] = {RUNTIME_NAME: runtime.__file__}
        remote_context = None
        if context_path is not None:
            files[CONTEXT_NAME] = context_path
            remote_context = f"{upload.FILES_DIR}/{CONTEXT_NAME}"
        setup = runtime.bootstrap_code(
            f"{upload.FILES_DIR}/{RUNTIME_NAME}",
            address=self.advertise(address),
            token=token,
            context_path=remote_context,
            context_kind=context_kind,
        )
        return GatewaySession(self, setup_code=setup + extra_setup, files=files)

    async def check(self) -> dict[str, Any]:
        """Ask the gateway for its kernelspecs: proves it is reachable and takes the token.

        Raises:
            GatewayAuthError: the token was refused.
            GatewayError: the gateway is unreachable, or has no such kernelspec.
        """
        rest = self.rest()
        try:
            specs = await rest.request("GET", "/api/kernelspecs", what="list its kernelspecs")
        finally:
            rest.close()
        names = sorted((specs or {}).get("kernelspecs", {}))
        if self.kernel_name not in names:
            raise GatewayError(
                f"the gateway at {public_url(self.url)} has no kernelspec {self.kernel_name!r}; "
                f"it has: {', '.join(names) or 'none'}"
            )
        return specs

    async def list_kernels(self) -> list[dict[str, Any]]:
        """The kernels running on the gateway (it must allow listing them)."""
        rest = self.rest()
        try:
            return list(await rest.request("GET", "/api/kernels", what="list its kernels") or [])
        finally:
            rest.close()
