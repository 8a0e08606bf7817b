"""What a new user meets in the first hour: what a run says when it starts, as it goes and when it
ends; a sub-model the API refuses; the demo's models and cost cap; the documented commands."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from rlm_kernel import RLM, demo
from rlm_kernel.cli import main
from rlm_kernel.llm import DEFAULT_ROOT_MODEL, DEFAULT_SUB_MODEL
from rlm_kernel.progress import TerminalProgress
from rlm_kernel.testing import ScriptedModel

REPO = Path(__file__).resolve().parents[1]

TWO_STEPS = [
    "```repl\nprint(llm_query('one'))\nprint(llm_query('two'))\n```",
    "```repl\nx = 1\n```",
    "FINAL(done)",
]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text("some text\n")
    return path


# -- progress that tells the truth --------------------------------------------------------------


def test_a_steps_line_comes_after_its_code_with_that_steps_sub_calls(tmp_path):
    events: list[str] = []
    progress = TerminalProgress(stream=_Lines(events))
    replies = iter(TWO_STEPS)
    rlm = RLM(
        lambda m: next(replies),
        lambda m: "sub answer",
        on_output=lambda **kw: events.append(f"ran {kw['step']}.{kw['block']}"),
        on_step_end=progress.on_step_end,
        on_subcall=progress.on_subcall,
    )
    result = rlm.run("q", "ctx", notebook=tmp_path / "run.ipynb")
    assert result.answer == "done"
    assert events[0] == "ran 1.1"  # the block ran before its step was reported
    assert events[1].startswith("step 1/30: ran 1 code block, 2 sub-calls · total ")
    assert events[2] == "ran 2.1"
    assert events[3].startswith("step 2/30: ran 1 code block, 0 sub-calls · total ")
    assert events[4].startswith("step 3/30: ran 0 code blocks, 0 sub-calls · total ")
    assert len(events) == 5


class _Lines:
    """A text stream that keeps each printed line."""

    def __init__(self, into: list[str]) -> None:
        self.into = into

    def write(self, text: str) -> None:
        self.into.extend(line for line in text.splitlines() if line)

    def flush(self) -> None:
        pass


def test_the_command_line_says_models_and_limits_first_and_totals_last(
    capsys, text_file, tmp_path, fake_model_server
):
    fake_model_server.add_model("root", ScriptedModel(TWO_STEPS))
    fake_model_server.add_model("sub", "sub answer")
    out = tmp_path / "run.ipynb"
    argv = ["run", "--question", "q", "--context", str(text_file), "--out", str(out),
            "--model", "anthropic:root", "--sub-model", "anthropic:sub",
            "--max-subcalls", "5"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == "done\n"
    lines = captured.err.splitlines()
    assert lines[0] == (
        "models: anthropic:root (root), anthropic:sub (sub-calls) · "
        "at most 30 steps, 5 sub-calls, no cost cap"
    )
    assert lines[1].startswith("step 1/30: ran 1 code block, 2 sub-calls")
    assert re.fullmatch(
        rf"answered · 3 steps · [\d,]+ tokens · 2 sub-calls · cost unknown · [\d.]+s · "
        rf"notebook: {re.escape(str(out))}",
        lines[-1],
    ), lines[-1]


# -- a sub-model the API refuses ----------------------------------------------------------------

AROUND_FAILURES = [
    "```repl\ntry:\n    print(llm_query('one'))\nexcept SubcallError as e:\n    print('failed')\n"
    "FINAL('made up without the sub-model')\n```",
    "FINAL(never asked)",
]


@pytest.mark.parametrize("status", [404, 401])
def test_a_refused_sub_model_ends_the_run_with_the_apis_reason(
    capsys, text_file, tmp_path, fake_model_server, status
):
    fake_model_server.add_model("root", ScriptedModel(AROUND_FAILURES))
    if status == 401:
        fake_model_server.add_model("sub", "unused")
        fake_model_server.fail(401, model="sub", times=5)
    sub = "anthropic:sub" if status == 401 else "anthropic:claude-typo"
    out = tmp_path / "run.ipynb"
    argv = ["run", "--question", "q", "--context", str(text_file), "--out", str(out),
            "--model", "anthropic:root", "--sub-model", sub]  # fmt: skip
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no answer made up around the failure
    err = captured.err
    assert f"sub-call to {sub} failed: {sub}: HTTP {status}" in err, err
    assert "error (model error) · 1 step" in err
    assert f"error: {sub}: HTTP {status}" in err and "so the run stopped" in err
    assert "Traceback" not in err
    meta = nbformat.read(out, as_version=4).metadata.rlm
    assert (meta.status, meta.stop_reason, meta.answer) == ("error", "model_error", None)
    # The root was asked once: the run stopped after the block, not after a second reply.
    assert [r.model for r in fake_model_server.requests].count("root") == 1


# -- the demo with a key ------------------------------------------------------------------------


@pytest.mark.slow
def test_the_demo_with_a_key_names_its_models_and_runs_under_a_cost_cap(
    capsys, tmp_path, fake_model_server
):
    # The real default models, played by the demo's scripts on the fake server.
    root, sub = (m.partition(":")[2] for m in (DEFAULT_ROOT_MODEL, DEFAULT_SUB_MODEL))
    fake_model_server.add_model(root, ScriptedModel(demo.SCRIPTED_ROOT_REPLIES))
    fake_model_server.add_model(sub, demo.rule_sub_model)
    assert demo.uses_real_model()
    assert main(["demo", "--dir", str(tmp_path / "d")]) == 0
    err = capsys.readouterr().err
    cap = f"${demo.DEFAULT_COST_CAP_USD:g}"
    assert f"real models, {DEFAULT_ROOT_MODEL} and {DEFAULT_SUB_MODEL}" in err
    assert f"at most {cap}" in err and "--max-cost changes it" in err
    meta = nbformat.read(tmp_path / "d" / "demo-run.ipynb", as_version=4).metadata.rlm
    assert meta.limits.max_cost_usd == demo.DEFAULT_COST_CAP_USD
    fake_model_server.add_model(root, ScriptedModel(demo.SCRIPTED_ROOT_REPLIES))  # replies anew
    assert main(["demo", "--dir", str(tmp_path / "e"), "--max-cost", "2", "--quiet"]) == 0
    meta = nbformat.read(tmp_path / "e" / "demo-run.ipynb", as_version=4).metadata.rlm
    assert meta.limits.max_cost_usd == 2


# -- the documented commands --------------------------------------------------------------------


def test_the_lab_extra_installs_what_the_jupyterlab_and_replay_docs_use():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    lab = {re.split(r"[<>=;\s\[]", r)[0].lower() for r in extras["lab"]}
    assert {"ipywidgets", "jupyterlab", "nbconvert"} <= lab
    replay_doc = (REPO / "docs" / "replay.md").read_text()
    assert "rlm-kernel[lab]" in replay_doc


@pytest.mark.slow
def test_the_documented_nbconvert_command_replays_a_run(tmp_path, fake_model_server):
    doc = (REPO / "docs" / "replay.md").read_text()
    (line,) = [ln for ln in doc.splitlines() if ln.startswith("jupyter nbconvert")]
    argv = shlex.split(line)
    recorded = Path(argv[argv.index("--execute") + 1])
    replies = iter(["```repl\nn = len(context.split())\nprint(llm_query(str(n)))\n```", "FINAL(3)"])
    RLM(lambda m: next(replies), lambda m: "three").run(
        "How many words?", "one two three", notebook=tmp_path / recorded
    )
    jupyter = Path(sys.executable).with_name("jupyter")
    done = subprocess.run(
        [str(jupyter), *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PATH": f"{jupyter.parent}{os.pathsep}{os.environ['PATH']}"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    output = argv[argv.index("--output") + 1]
    replayed = nbformat.read(tmp_path / recorded.parent / output, as_version=4)
    outputs = [o for c in replayed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    texts = "".join(o.get("text", "") for o in outputs)
    assert "three" in texts


@pytest.mark.slow
def test_the_testing_docs_example_runs_and_writes_only_in_its_temp_folder(tmp_path):
    doc = (REPO / "docs" / "testing.md").read_text()
    (example,) = re.findall(r"````python\n(.*?)````", doc, flags=re.S)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["rlm_kernel.testing.pytest_plugin"]\n')
    (tmp_path / "test_example.py").write_text(example)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_example.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conftest.py", "test_example.py"]


def test_the_readme_explains_the_binder_link_instead_of_a_broken_badge():
    readme = (REPO / "README.md").read_text()
    assert "badge_logo.svg" not in readme  # no badge until the repository is public
    assert "https://mybinder.org/v2/gh/OWNER/NAME/HEAD?urlpath=lab/tree/notebooks" in readme
    assert "[docs/trust.md](docs/trust.md)" in readme
    for jargon in ("until recursion lands", "SDK's profiles"):
        assert jargon not in readme


def test_the_help_names_the_python_name_of_a_limit_that_differs(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    helped = " ".join(capsys.readouterr().out.split())
    assert "max_cost_usd" in helped
