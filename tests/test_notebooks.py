"""The example notebooks in notebooks/: they replay, and run headless where Binder would run them.

The slow test builds a fresh virtual environment from ``binder/requirements.txt`` exactly as
Binder does (``pip install -r binder/requirements.txt`` from the repository root) and executes
every notebook there with ``jupyter nbconvert --execute``, with no API key anywhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from rlm_kernel.cli import main

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))
RECORDED = [p for p in ALL if "rlm" in json.loads(p.read_text(encoding="utf-8"))["metadata"]]
SCRIPTED_NOTE = (
    "Recorded with scripted models (rlm-kernel's fake model API); see notebooks/record.py"
)
BINDER_REQUIREMENTS = "binder/requirements.txt"  # relative: Binder runs pip from the repo root
BADGE = "https://mybinder.org/v2/gh/OWNER/NAME/HEAD?urlpath=lab/tree/notebooks"  # no badge yet


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def code_of(nb: nbformat.NotebookNode) -> str:
    """The source of the recorded code cells (not the setup cell)."""
    return "\n".join(c.source for c in nb.cells if "step" in c.metadata.get("rlm", {}))


def test_the_examples_cover_the_walk_throughs_and_each_scenario():
    names = {p.stem for p in ALL}
    assert {"quickstart", "replay-and-fork"} <= names
    recorded = {p.stem: code_of(read(p)) for p in RECORDED}
    assert "quickstart" in recorded
    assert any("re.finditer" in code and "llm_query" not in code for code in recorded.values())
    assert any("llm_query_batched" in code and "FINAL(" in code for code in recorded.values())
    assert any('answer["ready"] = True' in code for code in recorded.values())


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.stem)
def test_every_recorded_notebook_replays(path, capsys):
    assert main(["replay", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "reproduced", report
    assert report["answer_source"] == "replay"  # code gives the answer, so Run All shows it too
    assert all(c["result"] == "same" for c in report["cells"])


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_every_notebook_says_it_was_recorded_with_scripted_models(path):
    nb = read(path)
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    if "rlm" in nb.metadata:
        # The summary comes first; the note is the cell right after it.
        assert "rlm-summary" in nb.cells[0].metadata.tags
        assert nb.cells[1].source.startswith(f"**{SCRIPTED_NOTE}.**")
        assert all("scripted" in m for m in nb.metadata.rlm.models.values())
    else:
        first = " ".join(markdown[0].replace("*", "").split()).lower()
        assert SCRIPTED_NOTE.lower() in first


def test_the_quickstart_shows_a_keyed_run_without_running_one():
    nb = read(NOTEBOOKS / "quickstart.ipynb")
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "export ANTHROPIC_API_KEY=" in markdown
    assert "rlm.run(" in markdown
    assert not [c for c in nb.cells if c.cell_type == "code" and "API_KEY" in c.source]


def test_the_contexts_are_small_and_sit_beside_their_notebooks():
    for path in RECORDED:
        rel = read(path).metadata.rlm.context.path
        assert not rel.startswith(("..", "/")), rel
        assert (NOTEBOOKS / rel).stat().st_size < 64_000, rel


def test_binder_installs_this_repository_and_jupyterlab():
    lines = (REPO / "binder" / "requirements.txt").read_text().splitlines()
    wanted = [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]
    assert "." in wanted
    assert "jupyterlab" in wanted
    assert BADGE in (REPO / "README.md").read_text()


# -- headless, in a fresh environment built from binder/ -----------------------------------------


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "OPENAI_", "CLAUDE_"))
        and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    return {**env, **extra}


@pytest.fixture(scope="module")
def binder_env(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh virtual environment made from binder/requirements.txt (pip cache reused)."""
    base = tmp_path_factory.mktemp("binder-env")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = _clean_env(
        {
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            # Only the environment's own kernelspec: none from the user's Jupyter folders.
            "JUPYTER_DATA_DIR": str(base / "jupyter-data"),
            "JUPYTER_CONFIG_DIR": str(base / "jupyter-config"),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
    )
    install = subprocess.run(
        [str(venv / "bin" / "python"), *("-m", "pip", "install", "-q"), "-r", BINDER_REQUIREMENTS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return venv, env


@pytest.mark.slow
def test_every_notebook_runs_headless_in_the_binder_environment(binder_env, tmp_path):
    venv, env = binder_env
    specs = subprocess.run(
        [str(venv / "bin" / "jupyter"), "kernelspec", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    kernel = json.loads(specs.stdout)["kernelspecs"]["python3"]["resource_dir"]
    assert Path(kernel).is_relative_to(venv), kernel  # the kernel is the fresh environment's

    executed = subprocess.run(
        [
            str(venv / "bin" / "jupyter"),
            *("nbconvert", "--to", "notebook", "--execute", "--output-dir", str(tmp_path)),
            *("--ExecutePreprocessor.timeout=300", "--ExecutePreprocessor.kernel_name=python3"),
            *map(str, ALL),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert executed.returncode == 0, executed.stderr[-5000:]
    for path in ALL:
        nb = read(tmp_path / path.name)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"], path.name
        if path not in RECORDED:
            continue
        finals = [
            o.metadata.rlm.replay
            for o in outputs
            if o.get("metadata", {}).get("rlm", {}).get("replay", {}).get("kind") == "final"
        ]
        assert finals, f"{path.name}: no FINAL line"
        assert finals[-1]["matches"], f"{path.name}: {finals[-1]}"
        assert finals[-1]["value"] == nb.metadata.rlm.answer
        line = next(
            o.data["text/plain"]
            for o in outputs
            if o.get("metadata", {}).get("rlm", {}).get("replay") is not None
        )
        assert re.search(r"\(matches the recorded answer\)$", line), line
    walkthrough = read(tmp_path / "replay-and-fork.ipynb")
    printed = "".join(
        o.get("text", "") for c in walkthrough.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "reproduced: 3 of 3 cells the same, the answer matches" in printed
    assert "forked from run" in printed
