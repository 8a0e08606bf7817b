"""Execute a notebook in a real kernel for tests (nbclient, the way nbconvert --execute does)."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat


def execute_notebook(
    nb: nbformat.NotebookNode, folder: Path, *, allow_errors: bool = False
) -> nbformat.NotebookNode:
    """Run every cell of ``nb`` with ``folder`` as the kernel's working directory."""
    client = nbclient.NotebookClient(
        nb,
        timeout=60,
        kernel_name="python3",
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(folder)}},
    )
    client.execute()
    return nb
