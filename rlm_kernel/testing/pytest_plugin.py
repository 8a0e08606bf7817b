"""pytest fixtures for testing code that calls models through the Anthropic or OpenAI SDKs.

Enable them in a ``conftest.py``::

    pytest_plugins = ["rlm_kernel.testing.pytest_plugin"]
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .server import FakeModelServer


@pytest.fixture
def fake_model_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FakeModelServer]:
    """A running :class:`FakeModelServer` that both SDKs in this test talk to.

    ``ANTHROPIC_BASE_URL``, ``ANTHROPIC_API_KEY``, ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``
    point at the server, and ``ANTHROPIC_CONFIG_DIR`` at an empty directory so that no profile
    of the user's leaks in. Add models with ``fake_model_server.add_model(name, model)``. The
    server stops when the test ends.
    """
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("ANTHROPIC_PROFILE", raising=False)
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path_factory.mktemp("anthropic-config")))
    with FakeModelServer() as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        yield server
