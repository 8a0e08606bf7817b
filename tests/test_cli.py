"""The command line: bad input exits 2 with one clear line; runs keep their notebook."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from rlm_kernel import demo
from rlm_kernel.cli import main
from rlm_kernel.testing import FakeModelServer, ScriptedModel


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


def test_bad_limit_value_names_the_option(capsys, text_file):
    with pytest.raises(SystemExit) as e:
        main(["run", "--question", "q", "--context", str(text_file), "--max-steps", "0"])
    assert e.value.code == 2
    assert "argument --max-steps: must be a positive number, not 0" in capsys.readouterr().err


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
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_ctrl_c_and_a_polite_kill_save_the_notebook_as_interrupted(
    tmp_path, text_file, fake_model_server, signum
):
    started = tmp_path / "started"
    endless = f"```repl\nimport pathlib, time\npathlib.Path({str(started)!r}).touch()\n"
    endless += "time.sleep(60)\n```"
    fake_model_server.add_model("root", ScriptedModel([endless]))
    out = tmp_path / "i.ipynb"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlm_kernel", "run", "--question", "q", "--context", str(text_file),
         "--model", "anthropic:root", "--out", str(out)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180  # a loaded machine may take long to start a kernel
    while time.monotonic() < deadline and not started.exists():  # the endless cell is running
        time.sleep(0.05)
    assert started.exists(), "the endless cell never started"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"interrupted; the notebook {out} is kept" in err
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


# -- help that answers ----------------------------------------------------------------------------

COMMANDS = ["run", "resume", "replay", "view", "bundle", "demo"]


def test_no_command_lists_the_commands(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    for command in COMMANDS:
        assert f"\n    {command} " in err
    assert "exit status:" in err and "130" in err


def test_the_description_is_for_users(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and ":mod:" not in out
    assert "notebook" in out and "replay" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_an_example_and_its_exit_status(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"\n  rlm-kernel {command} " in out.split("example", 1)[1]
    assert "exit status" in out
    if command in ("run", "resume"):
        for name in (
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_BASE_URL",
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
        ):
            assert name in out
        assert "130" in out and "SIGTERM" in out


def test_run_help_states_defaults_and_what_max_depth_does(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: anthropic:claude-sonnet-5-5)" in out
    assert "(default: --model when it is given, else anthropic:claude-haiku-5-5)" in out
    assert "(default: rlm-runs/run-<date>-<time>-<id>.ipynb)" in out
    assert "below it rlm_query starts a child run (own kernel and notebook)" in out
    assert "--child-model" in out and "--child-max-steps" in out
    assert "--approve" in out and "--force" in out


# -- overwrites ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_existing_notebook_is_not_replaced_silently(
    capsys, text_file, tmp_path, fake_model_server
):
    fake_model_server.add_model("root", ScriptedModel(["FINAL(ok)"] * 3))
    out = tmp_path / "a.ipynb"
    out.write_text("my own notebook")
    argv = ["run", "--question", "q", "--context", str(text_file), "--model", "anthropic:root"]
    err = one_line_error(capsys, [*argv, "--out", str(out)])
    assert f"{out} exists; choose another --out, or add --force to replace it" in err
    assert out.read_text() == "my own notebook" and not fake_model_server.requests

    assert main([*argv, "--out", str(out), "--force", "--quiet"]) == 0
    assert nbformat.read(out, as_version=4).metadata.rlm.answer == "ok"
    capsys.readouterr()

    # resume's default name is refused the second time too
    assert main(["resume", str(out), "--from-step", "1", "--quiet"]) == 0
    fork = tmp_path / "a-from-1.ipynb"
    assert nbformat.read(fork, as_version=4).metadata.rlm.parent.step == 1
    assert capsys.readouterr().out == "ok\n"
    err = one_line_error(capsys, ["resume", str(out), "--from-step", "1"])
    assert f"{fork} exists" in err and "--force" in err


# -- --approve ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_approve_asks_on_stderr_and_a_skipped_block_is_recorded(
    tmp_path, text_file, fake_model_server
):
    fake_model_server.add_model(
        "root", ScriptedModel(["```repl\nprint('should not run')\n```", "FINAL(done)"])
    )
    out = tmp_path / "ap.ipynb"
    proc = subprocess.run(
        [sys.executable, "-m", "rlm_kernel", "run", "--question", "q", "--context", str(text_file),
         "--model", "anthropic:root", "--out", str(out), "--approve"],
        input="n\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"  # the prompts do not mix with the answer
    assert "--- step 1, block 1 ---\nprint('should not run')" in proc.stderr
    assert "[y]es / [n]o (skip)" in proc.stderr
    nb = nbformat.read(out, as_version=4)
    (cell,) = [
        c for c in nb.cells if c.cell_type == "code" and c.metadata.get("rlm", {}).get("step") == 1
    ]
    assert cell.metadata.rlm.approval == {"decision": "skipped"}
    assert cell.outputs == []


# -- a local OpenAI-compatible server, as the README shows it ------------------------------------


def readme_example(marker: str) -> tuple[dict[str, str], list[str]]:
    """The environment and the rlm-kernel command of the README's bash block holding ``marker``."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    (block,) = [b for b in blocks if marker in b]
    env, argv = {}, []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line)
        if words[:1] == ["export"]:
            name, _, value = words[1].partition("=")
            env[name] = value
        elif words[:1] == ["rlm-kernel"]:
            argv = words[1:]
    return env, argv


@pytest.mark.slow
def test_the_readme_ollama_example_runs_on_one_server(tmp_path, monkeypatch):
    env, argv = readme_example("11434")
    assert env["OPENAI_BASE_URL"].endswith("/v1") and argv[:2] == ["run", "--model"]
    model = argv[2].partition(":")[2]
    replies = [
        "```repl\nprint(llm_query('Which service times out? ' + context['a.log']))\n```",
        "the api service",
        "FINAL(api)",
    ]
    # The key the README sets is the one the server accepts; no Anthropic key is set at all.
    with FakeModelServer({model: ScriptedModel(replies)}, api_key=env["OPENAI_API_KEY"]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", env["OPENAI_API_KEY"])
        monkeypatch.chdir(tmp_path)
        (tmp_path / "logs").mkdir()
        (tmp_path / "logs" / "a.log").write_text("api: timeout\ndb: ok\n")
        assert main(argv) == 0
        requests = list(server.requests)
    assert [(r.api, r.model) for r in requests] == [("openai", model)] * 3
    max_tokens = [r.body["max_tokens"] for r in requests]
    flag_value = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    root, sub = int(flag_value["--max-tokens"]), int(flag_value["--sub-max-tokens"])
    assert max_tokens == [root, sub, root]
    (nb_path,) = (tmp_path / "rlm-runs").glob("run-*.ipynb")  # the documented default folder
    meta = nbformat.read(nb_path, as_version=4).metadata.rlm
    assert meta.models == {"root": f"openai:{model}", "sub": f"openai:{model}"}
    assert meta.limits.max_concurrency == int(flag_value["--max-concurrency"])
