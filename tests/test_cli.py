"""The command line: bad input exits 2 with one clear line; runs keep their notebook."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from rlm_kernel import demo
from rlm_kernel.cli import main
from rlm_kernel.testing import ScriptedModel


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text("some text\n")
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_missing_context_path(capsys, tmp_path, fake_model_server):
    err = one_line_error(capsys, ["run", "--question", "q", "--context", str(tmp_path / "nope")])
    assert "does not exist" in err and "nope" in err


def test_empty_question(capsys, text_file, fake_model_server):
    err = one_line_error(capsys, ["run", "--question", "  ", "--context", str(text_file)])
    assert "question is empty" in err


def test_unknown_provider(capsys, text_file):
    argv = ["run", "--question", "q", "--context", str(text_file), "--model", "nosuch:model"]
    err = one_line_error(capsys, argv)
    assert "no model provider named 'nosuch'" in err and "anthropic" in err


def test_missing_api_key_names_the_variable(capsys, text_file):
    err = one_line_error(capsys, ["run", "--question", "q", "--context", str(text_file)])
    assert "ANTHROPIC_API_KEY" in err
    argv = ["run", "--question", "q", "--context", str(text_file), "--model", "openai:gpt-x"]
    assert "OPENAI_API_KEY" in one_line_error(capsys, argv)


def test_unwritable_output_path(capsys, text_file, tmp_path, fake_model_server):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        argv = ["run", "--question", "q", "--context", str(text_file)]
        argv += ["--model", "anthropic:m", "--sub-model", "anthropic:m"]
        if os.geteuid() != 0:  # root can write anywhere: use a path under a file instead
            err = one_line_error(capsys, [*argv, "--out", str(locked / "run.ipynb")])
        else:
            err = one_line_error(capsys, [*argv, "--out", str(text_file / "run.ipynb")])
        assert "cannot write the notebook" in err
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--context", "x"],
        ["run", "--question", "q"],
        ["run", "--question", "q", "--context", "x", "--max-steps", "many"],
        ["nosuchcommand"],
    ],
)
def test_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("rlm-kernel")


def test_bad_limit_value(capsys, text_file, fake_model_server):
    argv = ["run", "--question", "q", "--context", str(text_file), "--max-steps", "0"]
    assert "max_steps" in one_line_error(capsys, argv)


def test_json_output_and_progress(capsys, text_file, tmp_path, fake_model_server):
    fake_model_server.add_model(
        "root", ScriptedModel(["```repl\nn = len(context)\n```\nFINAL_VAR(n)"])
    )
    fake_model_server.add_model("sub", "unused")
    base = ["run", "--question", "How long?", "--context", str(text_file)]
    base += ["--model", "anthropic:root", "--sub-model", "anthropic:sub"]
    assert main([*base, "--out", str(tmp_path / "a.ipynb"), "--json", "--embed-context"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (
        nbformat.read(out["notebook"], as_version=4).metadata.rlm.context.embedded == "some text\n"
    )
    assert set(out) >= {"answer", "status", "notebook", "steps", "subcalls", "usage", "cost_usd"}
    assert (out["answer"], out["status"], out["steps"]) == ("10", "answered", 1)
    assert out["cost_usd"] is None  # the scripted model has no price: unknown, not a guess

    fake_model_server.add_model("root", ScriptedModel(["FINAL(done)"]))
    assert main([*base, "--out", str(tmp_path / "b.ipynb")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "done\n"  # the answer alone on stdout
    assert "step 1/30" in captured.err and "b.ipynb" in captured.err


def test_no_answer_exits_1_and_says_why(capsys, text_file, tmp_path, fake_model_server):
    looping = ScriptedModel(["```repl\nprint(1)\n```"] * 2 + ["I am not sure."])
    fake_model_server.add_model("root", looping)
    argv = ["run", "--question", "q", "--context", str(text_file), "--max-steps", "2"]
    argv += ["--model", "anthropic:root", "--sub-model", "anthropic:root"]
    argv += ["--out", str(tmp_path / "r.ipynb"), "--json"]
    assert main(argv) == 1
    out = json.loads(capsys.readouterr().out)
    assert (out["status"], out["stop_reason"], out["answer"]) == ("no_answer", "max_steps", None)
    assert len(looping.calls) == 3  # two steps, then one last call for the best answer
    nb = nbformat.read(tmp_path / "r.ipynb", as_version=4)
    assert nb.metadata.rlm.status == "no_answer"


def test_model_failure_is_recorded(capsys, text_file, tmp_path, fake_model_server):
    fake_model_server.add_model("root", ScriptedModel(["unused"]))
    fake_model_server.fail(500, times=10, retry_after=0.01)
    argv = ["run", "--question", "q", "--context", str(text_file)]
    argv += ["--model", "anthropic:root", "--sub-model", "anthropic:root"]
    argv += ["--out", str(tmp_path / "f.ipynb")]
    assert main(argv) == 1
    assert "HTTP 500" in capsys.readouterr().err
    nb = nbformat.read(tmp_path / "f.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.rlm.status == "error" and "HTTP 500" in nb.metadata.rlm.error


@pytest.mark.slow
def test_ctrl_c_saves_the_notebook_as_interrupted(tmp_path, text_file, fake_model_server):
    fake_model_server.add_model(
        "root", ScriptedModel(["```repl\nimport time\ntime.sleep(60)\n```"])
    )
    out = tmp_path / "i.ipynb"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlm_kernel", "run", "--question", "q", "--context", str(text_file),
         "--model", "anthropic:root", "--sub-model", "anthropic:root", "--out", str(out)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (out.exists() and "step-1-" in out.read_text()):
        time.sleep(0.05)
    while time.monotonic() < deadline and len(fake_model_server.requests) < 1:
        time.sleep(0.05)
    time.sleep(0.5)  # the endless cell is running
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    nb = nbformat.read(out, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.rlm.status == "interrupted"


def test_demo_runs_without_a_key(tmp_path, capsys):
    assert main(["demo", "--dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "SCRIPTED" in captured.err and "demo-run.ipynb" in captured.err
    tickets = (tmp_path / "tickets.txt").read_text().split("\n\n")
    billing = [t for t in tickets if any(b in t for b in demo._BILLING)]
    assert captured.out.startswith(f"{len(billing)} tickets report a billing problem")
    nb = nbformat.read(tmp_path / "demo-run.ipynb", as_version=4)
    assert nb.metadata.rlm.models.root == "anthropic:claude-scripted-root"
    assert Path(nb.metadata.rlm.context.path) == Path("tickets.txt")


def test_undecodable_bytes_give_a_one_line_warning(capsys, tmp_path, fake_model_server):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café au lait".encode("latin-1"))
    fake_model_server.add_model("root", ScriptedModel(["FINAL(ok)"]))
    argv = ["run", "--question", "q", "--context", str(latin), "--out", str(tmp_path / "w.ipynb")]
    assert main([*argv, "--model", "anthropic:root", "--sub-model", "anthropic:root"]) == 0
    err = capsys.readouterr().err
    assert "rlm-kernel: warning:" in err and "not valid UTF-8" in err
