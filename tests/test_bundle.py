"""``rlm-kernel bundle``: a folder that shares one run and replays wherever it is copied.

The runs bundled here are real (``RLM.run`` with plain-function models and a real kernel); each
bundle is checked by replaying it with ``rlm-kernel replay``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

import rlm_kernel
from rlm_kernel import RLM, __version__
from rlm_kernel.bundle import binder_url, bundle_run, own_wheel
from rlm_kernel.cli import main

CONTEXT = "alpha beta\ngamma delta epsilon\n"
WHEEL = f"rlm_kernel-{__version__}-py3-none-any.whl"

STEP_1 = """```repl
lengths = llm_query_batched(["Count words: " + line for line in context.splitlines()])
print(lengths)
```"""
STEP_2 = """```repl
total = sum(int(x) for x in lengths)
print(total)
```
FINAL_VAR(total)"""


def root(messages):
    return (STEP_1, STEP_2)[sum(m["role"] == "assistant" for m in messages)]


def sub(messages):
    return str(len(messages[-1]["content"].split()) - 2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two recorded runs: context beside the notebook, and context in ``../data/``."""
    base = tmp_path_factory.mktemp("runs")
    beside = RLM(root, sub).run(
        "How many words?", context=CONTEXT, notebook=base / "a" / "run.ipynb"
    )
    data = base / "b" / "data" / "words.txt"
    data.parent.mkdir(parents=True)
    data.write_text(CONTEXT)
    (base / "b" / "runs").mkdir()
    outside = RLM(root, sub).run(
        "How many words?", context=data, notebook=base / "b" / "runs" / "my run.ipynb"
    )
    assert beside.answer == outside.answer == "5"
    return {"beside": Path(beside.notebook), "outside": Path(outside.notebook)}


def context_path(nb_path: Path) -> str:
    return json.loads(nb_path.read_text())["metadata"]["rlm"]["context"]["path"]


def replays(nb_path: Path, capsys) -> bool:
    capsys.readouterr()
    code = main(["replay", str(nb_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    return code == 0 and report["status"] == "reproduced"


def one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_a_bundle_holds_the_run_its_context_binder_files_and_a_readme(runs, tmp_path, capsys):
    dest = tmp_path / "shared"
    assert main(["bundle", str(runs["beside"]), str(dest)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(dest)
    assert "run.ipynb" in captured.err
    ctx = context_path(runs["beside"])
    wheel = f"binder/{WHEEL}"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(
        ["run.ipynb", ctx, wheel, "binder/requirements.txt", "README.md"]
    )
    assert wheel in captured.err
    # Nothing to rewrite: the notebook is copied byte for byte.
    assert (dest / "run.ipynb").read_bytes() == runs["beside"].read_bytes()
    # The requirements install the wheel the bundle carries, not a package index's rlm-kernel.
    requirements = (dest / "binder" / "requirements.txt").read_text().split()
    assert requirements == [f"./{wheel}", "jupyterlab", "ipywidgets"]
    readme = (dest / "README.md").read_text()
    assert "How many words?" in readme and "jupyter lab run.ipynb" in readme
    assert "rlm-kernel replay run.ipynb" in readme
    # Moved away from the original, the bundle replays on its own.
    moved = shutil.move(dest, tmp_path / "elsewhere")
    assert replays(Path(moved) / "run.ipynb", capsys)


def test_a_context_outside_the_notebooks_folder_is_moved_in_and_the_path_rewritten(
    runs, tmp_path, capsys
):
    source = runs["outside"]
    assert context_path(source) == "../data/words.txt"
    before = source.read_bytes()
    made = bundle_run(source, tmp_path / "shared")
    assert made.context_moved
    assert made.context == tmp_path / "shared" / "words.txt"
    assert context_path(made.notebook) == "words.txt"
    expected = json.loads(before)["metadata"]["rlm"]["context"]["sha256"]
    assert hashlib.sha256(made.context.read_bytes()).hexdigest() == expected
    nbformat.validate(nbformat.read(made.notebook, 4))
    assert source.read_bytes() == before  # the original is untouched
    shutil.rmtree(source.parent.parent / "data")  # the bundle needs nothing outside itself
    try:
        assert replays(made.notebook, capsys)
    finally:
        (source.parent.parent / "data").mkdir()
        (source.parent.parent / "data" / "words.txt").write_text(CONTEXT)


def test_with_a_repository_the_binder_url_is_printed(runs, tmp_path, capsys):
    dest = tmp_path / "shared"
    dest.mkdir()  # an empty folder is fine
    argv = ["bundle", str(runs["outside"]), str(dest), "--repo", "someone/runs", "--ref", "v1"]
    assert main(argv) == 0
    url = capsys.readouterr().out.strip()
    assert url == "https://mybinder.org/v2/gh/someone/runs/v1?urlpath=lab/tree/my%20run.ipynb"
    assert url in (dest / "README.md").read_text()


def test_binder_urls_quote_the_path_and_ref():
    url = binder_url("o/r", "feature/x", "a b/c#1&.ipynb")
    assert url == "https://mybinder.org/v2/gh/o/r/feature/x?urlpath=lab/tree/a%20b/c%231%26.ipynb"


def test_an_embedded_context_is_enough(runs, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    nb_path = folder / "run.ipynb"
    data = json.loads(runs["beside"].read_text())
    data["metadata"]["rlm"]["context"]["embedded"] = CONTEXT
    nb_path.write_text(json.dumps(data, indent=1))  # no context file beside it
    made = bundle_run(nb_path, tmp_path / "shared")
    assert made.context is None
    assert "embedded" in made.describe()
    assert replays(made.notebook, capsys)


@pytest.mark.parametrize("damage", ["missing", "altered"])
def test_a_missing_or_altered_context_is_bad_input(runs, tmp_path, capsys, damage):
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(runs["beside"], folder / "run.ipynb")
    ctx = context_path(runs["beside"])
    if damage == "altered":
        (folder / ctx).write_text(CONTEXT + "more\n")
    err = one_line_error(capsys, ["bundle", str(folder / "run.ipynb"), str(tmp_path / "out")])
    assert ("missing" if damage == "missing" else "differs") in err
    assert not (tmp_path / "out").exists()


def test_bad_input_exits_2_with_one_line(runs, tmp_path, capsys):
    nb = str(runs["beside"])
    out = str(tmp_path / "out")
    err = one_line_error(capsys, ["bundle", str(tmp_path / "absent.ipynb"), out])
    assert "cannot read run notebook" in err
    plain = tmp_path / "plain.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), str(plain))
    assert "not an rlm-kernel run notebook" in one_line_error(capsys, ["bundle", str(plain), out])
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    err = one_line_error(capsys, ["bundle", nb, str(full)])
    assert "exists and is not empty" in err
    assert sorted(p.name for p in full.iterdir()) == ["keep.txt"]
    err = one_line_error(capsys, ["bundle", nb, str(full / "keep.txt")])
    assert "is not a folder" in err
    assert "OWNER/NAME" in one_line_error(capsys, ["bundle", nb, out, "--repo", "no-slash"])
    assert "--ref needs --repo" in one_line_error(capsys, ["bundle", nb, out, "--ref", "main"])
    assert not (tmp_path / "out").exists()
    # Nothing half-written is left beside the destination.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "plain.ipynb"]


# -- the wheel a bundle carries ---------------------------------------------------------------


def test_the_wheel_holds_the_running_package_and_is_cached_per_version(tmp_path):
    first = own_wheel(tmp_path / "cache")
    assert first.name == WHEEL
    assert own_wheel(tmp_path / "cache") == first  # built once
    package = Path(rlm_kernel.__file__).parent
    with zipfile.ZipFile(first) as zf:
        names = set(zf.namelist())
        info = f"rlm_kernel-{__version__}.dist-info"
        metadata = zf.read(f"{info}/METADATA").decode()
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        runtime = zf.read("rlm_kernel/runtime.py")
        record = zf.read(f"{info}/RECORD").decode()
    assert (
        f"Version: {__version__}" in metadata and "rlm-kernel = rlm_kernel.cli:main" in entry_points
    )
    assert runtime == (package / "runtime.py").read_bytes()
    assert {"rlm_kernel/llm/prices.json", f"{info}/WHEEL", f"{info}/RECORD"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert len(record.splitlines()) == len(names)


@pytest.mark.slow
def test_the_bundles_requirements_install_in_a_fresh_environment(runs, tmp_path):
    dest = tmp_path / "shared"
    bundle_run(runs["beside"], dest)
    (line,) = [ln for ln in (dest / "binder" / "requirements.txt").read_text().split() if "/" in ln]
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    # Offline: the wheel alone, by the relative path the requirements give, run from the bundle.
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index"]
    subprocess.run([*pip, "--no-deps", line], cwd=dest, check=True, timeout=300)
    shown = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('rlm-kernel'))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert shown.stdout.strip() == __version__
    assert (env / "bin" / "rlm-kernel").is_file()
    # The installed code runs: imported from the install folder with this environment's deps.
    target = tmp_path / "target"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
         str(target), line], cwd=dest, check=True, timeout=300,
    )  # fmt: skip
    code = (
        f"import sys; sys.path.insert(0, {str(target)!r}); import rlm_kernel, rlm_kernel.cli; "
        "print(rlm_kernel.__file__); rlm_kernel.cli.main(['bundle', '--help'])"
    )
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert ran.stdout.startswith(str(target / "rlm_kernel" / "__init__.py"))
    assert "binder/requirements.txt" in ran.stdout


@pytest.fixture(autouse=True)
def _wheel_cache(tmp_path, monkeypatch):
    # Bundles cache the wheel they carry; each test gets its own cache, not the user's.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
