"""Signing notebooks so Jupyter trusts their outputs, checked with nbformat's own notary."""

from __future__ import annotations

import nbformat
import pytest
from nbformat.sign import NotebookNotary
from test_view import record_run

from rlm_kernel import NotebookFormatError, trust


@pytest.fixture
def run_notebook(tmp_path):
    return record_run(tmp_path)


def notary_trusts(path, data_dir) -> bool:
    """What a Jupyter server using ``data_dir`` decides when it opens ``path``."""
    data_dir.mkdir(parents=True, exist_ok=True)  # as the server makes its data folder
    with NotebookNotary(data_dir=str(data_dir)) as notary:
        return notary.check_signature(nbformat.read(path, as_version=4))


def test_a_signed_run_notebook_is_trusted_with_the_same_secret(run_notebook, tmp_path):
    data_dir = tmp_path / "jupyter-data"
    assert not notary_trusts(run_notebook, data_dir)
    trust.sign_notebook(run_notebook, data_dir=data_dir)
    assert (data_dir / "notebook_secret").exists()
    assert notary_trusts(run_notebook, data_dir)
    assert trust.is_trusted(run_notebook, data_dir=data_dir)
    # Another user's secret does not trust it.
    assert not notary_trusts(run_notebook, tmp_path / "someone-else")


def test_the_default_data_dir_is_jupyters(run_notebook, tmp_path, monkeypatch):
    data_dir = tmp_path / "isolated"
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data_dir))
    trust.sign_notebook(run_notebook)
    assert notary_trusts(run_notebook, data_dir)
    assert trust.is_trusted(run_notebook)


def test_any_change_makes_it_untrusted(run_notebook, tmp_path):
    data_dir = tmp_path / "jupyter-data"
    trust.sign_notebook(run_notebook, data_dir=data_dir)
    nb = nbformat.read(run_notebook, as_version=4)
    nb.cells[3].outputs = []
    nbformat.write(nb, run_notebook)
    assert not trust.is_trusted(run_notebook, data_dir=data_dir)


@pytest.mark.parametrize("content", [None, "not json", '{"nbformat": 99}'])
def test_what_is_not_a_notebook_is_refused(tmp_path, content):
    path = tmp_path / "x.ipynb"
    if content is not None:
        path.write_text(content)
    with pytest.raises(NotebookFormatError, match=r"x\.ipynb"):
        trust.sign_notebook(path, data_dir=tmp_path / "d")
