"""Mark a notebook as trusted on this machine, as ``jupyter trust`` does.

Jupyter renders a notebook's unsafe outputs — saved widget views, JavaScript, unsanitized HTML —
only when it trusts the notebook: when an HMAC of its content, made with this user's secret, is in
the signature database of the Jupyter data directory. JupyterLab signs what it saves itself; a
notebook written by a program is untrusted until it is signed, so its saved widget state shows as
plain text. Sign only notebooks whose outputs you are willing to run in your browser.
"""

from __future__ import annotations

import os
import pathlib

import nbformat
from jupyter_core.paths import jupyter_data_dir
from nbformat.sign import NotebookNotary

from .errors import NotebookFormatError


def sign_notebook(
    path: str | os.PathLike[str], *, data_dir: str | os.PathLike[str] | None = None
) -> None:
    """Sign the notebook at ``path`` so Jupyter on this machine trusts its outputs.

    The notebook is read exactly as the Jupyter server reads it (nbformat 4), so the stored
    signature matches what the server computes when the file is opened. Signing again after the
    file changes is needed: any edit makes it untrusted.

    Args:
        path: the ``.ipynb`` file.
        data_dir: the Jupyter data directory holding ``notebook_secret`` and
            ``nbsignatures.db``; by default the one Jupyter uses (``JUPYTER_DATA_DIR`` or the
            platform's default).

    Raises:
        NotebookFormatError: the file cannot be read or is not a valid notebook.
    """
    nb = _read(path)
    with _notary(data_dir) as notary:
        notary.sign(nb)


def is_trusted(
    path: str | os.PathLike[str], *, data_dir: str | os.PathLike[str] | None = None
) -> bool:
    """Whether Jupyter on this machine trusts the notebook at ``path`` (see :func:`sign_notebook`).

    Raises:
        NotebookFormatError: the file cannot be read or is not a valid notebook.
    """
    nb = _read(path)
    with _notary(data_dir) as notary:
        return notary.check_signature(nb)


def _notary(data_dir: str | os.PathLike[str] | None) -> NotebookNotary:
    folder = pathlib.Path(jupyter_data_dir() if data_dir is None else data_dir)
    # On first use the notary writes its secret there, and cannot if the folder is missing.
    folder.mkdir(parents=True, exist_ok=True)
    return NotebookNotary(data_dir=str(folder))


def _read(path: str | os.PathLike[str]) -> nbformat.NotebookNode:
    try:
        return nbformat.read(os.fspath(path), as_version=4)
    except OSError as e:
        raise NotebookFormatError(f"cannot read notebook {path}: {e.strerror or e}") from e
    except (ValueError, nbformat.ValidationError) as e:
        # nbformat reports bad JSON and unknown versions as ValueError subclasses.
        raise NotebookFormatError(f"{path} is not a valid notebook: {e}") from e
