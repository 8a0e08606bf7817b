"""Shared test set-up: a clean, hermetic environment for every test."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["rlm_kernel.testing.pytest_plugin"]

# Variables that could point the SDKs at a real account or change their behaviour.
_MODEL_ENV_PREFIXES = ("ANTHROPIC_", "OPENAI_", "CLAUDE_")


@pytest.fixture(autouse=True)
def clean_environ(tmp_path_factory, monkeypatch):
    """Keep os.environ free of real credentials and config directories for every test."""
    for name in list(os.environ):
        if name.startswith(_MODEL_ENV_PREFIXES):
            monkeypatch.delenv(name)
    empty = tmp_path_factory.mktemp("sdk-config")
    # The Anthropic SDK also reads credentials from its config directory.
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(empty))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(empty))
    # Stable traceback file names in kernel outputs.
    monkeypatch.setenv("IPYKERNEL_CELL_NAME", "<cell>")
    yield


@pytest.fixture(scope="session")
def recorded_tree(tmp_path_factory):
    """The root notebook of a recorded run tree (see ``trees.py``); copy it before changing it."""
    from trees import record_tree

    return record_tree(tmp_path_factory.mktemp("run-tree"))
