"""End to end: the CLI and RLM.run through the real SDKs, a fake model API and a real kernel."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import scenarios

from rlm_kernel.llm.anthropic import AnthropicLLM
from rlm_kernel.run import RLM
from rlm_kernel.testing import ScriptedModel

pytestmark = pytest.mark.slow

ROOT, SUB = "root-model", "sub-model"
VARIANTS = ["anthropic-cli", "openai-cli", "anthropic-api-nonstream"]


def run_cli(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "rlm_kernel", *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        cwd=cwd,
        timeout=120,
    )


def play(server, scenario: scenarios.Scenario, variant: str, tmp_path: Path, env=None):
    """Run a scenario; return (result dict, notebook, context path)."""
    server.add_model(ROOT, ScriptedModel(scenario.root))
    server.add_model(SUB, scenario.sub or (lambda messages: "unused"))
    context = scenario.make_context(tmp_path)
    out = tmp_path / "run.ipynb"
    if variant.endswith("-cli"):
        provider = variant.split("-")[0]
        proc = run_cli(
            [
                "run",
                "--question", scenario.question,
                "--context", str(context),
                "--model", f"{provider}:{ROOT}",
                "--sub-model", f"{provider}:{SUB}",
                "--out", str(out),
                "--json",
                *scenario.cli_args,
            ],
            env=env,
        )  # fmt: skip
        assert proc.returncode in (0, 1), proc.stderr
        result = json.loads(proc.stdout)
    else:
        limits = {}
        args = scenario.cli_args
        for flag, value in zip(args[::2], args[1::2], strict=False):
            limits[flag.lstrip("-").replace("-", "_")] = float(value)
        if "max_output_chars" in limits:
            limits["max_output_chars"] = int(limits["max_output_chars"])
        rlm = RLM(AnthropicLLM(ROOT, stream=False), AnthropicLLM(SUB, stream=True), **limits)
        result = rlm.run(scenario.question, context, notebook=out).to_dict()
    nb = nbformat.read(out, as_version=4)
    nbformat.validate(nb)
    return result, nb, context


def code_cells(nb):
    return [c for c in nb.cells if "rlm-code" in c.metadata.get("tags", [])]


@pytest.fixture(params=VARIANTS)
def variant(request):
    return request.param


@pytest.mark.parametrize("name", [s.name for s in scenarios.ALL if s.name != "secrets"])
def test_scripted_runs_are_answered(fake_model_server, variant, tmp_path, name):
    scenario = scenarios.by_name(name)
    result, nb, context = play(fake_model_server, scenario, variant, tmp_path)
    assert result["status"] == "answered", result
    assert result["answer"] == scenario.expected(tmp_path)
    assert nb.metadata.rlm.status == "answered"
    assert nb.metadata.rlm.answer == result["answer"]
    assert nb.cells[-1].source.endswith(result["answer"])
    assert nb.metadata.rlm.context.sha256 == hashlib.sha256(context.read_bytes()).hexdigest()
    root_calls = [r for r in fake_model_server.requests if r.model == ROOT]
    assert len(root_calls) == result["steps"] == nb.metadata.rlm.steps
    if variant == "anthropic-cli":  # long root turns stream, short sub-calls do not
        assert all(r.stream for r in root_calls)
        assert not any(r.stream for r in fake_model_server.requests if r.model == SUB)


def test_batched_calls_are_recorded_exactly(fake_model_server, variant, tmp_path):
    result, nb, context = play(fake_model_server, scenarios.BATCHED, variant, tmp_path)
    text = context.read_text(encoding="utf-8")
    chunks = [
        text[i : i + scenarios.BATCH_CHUNK] for i in range(0, len(text), scenarios.BATCH_CHUNK)
    ]
    prompts = ["Reply with the secret code in this text, or NONE.\n" + c for c in chunks]
    recorded = code_cells(nb)[0].metadata.rlm.subcalls
    assert [s.prompt_sha256 for s in recorded] == [
        hashlib.sha256(p.encode()).hexdigest() for p in prompts
    ]
    assert [s.prompt_chars for s in recorded] == [len(p) for p in prompts]
    assert [s.response for s in recorded] == [
        scenarios._code_finder([{"content": p}]) for p in prompts
    ]
    assert all(s.kind == "llm" and s.model.endswith(SUB) and s.error is None for s in recorded)
    sub_requests = [r for r in fake_model_server.requests if r.model == SUB]
    assert len(sub_requests) == len(prompts) == result["subcalls"] == nb.metadata.rlm.subcalls
    assert nb.metadata.rlm.usage.sub.calls == len(prompts)


def test_traceback_is_shown_and_recorded(fake_model_server, variant, tmp_path):
    _result, nb, _ = play(fake_model_server, scenarios.RECOVER, variant, tmp_path)
    first = code_cells(nb)[0]
    assert first.metadata.rlm.exec.status == "error"
    assert first.outputs[-1].output_type == "error"
    assert first.outputs[-1].ename == "AttributeError"
    assert "AttributeError" in first.metadata.rlm.exec.shown


def test_endless_cell_is_interrupted_and_state_kept(fake_model_server, variant, tmp_path):
    _result, nb, _ = play(fake_model_server, scenarios.ENDLESS, variant, tmp_path)
    cells = code_cells(nb)
    assert cells[0].metadata.rlm.exec.status == "timeout"
    assert "interrupted" in cells[0].metadata.rlm.exec.shown
    assert cells[1].outputs[0].text == "42\n"  # x survived the interrupt


def test_huge_output_is_cut_for_the_model_and_capped_in_the_notebook(
    fake_model_server, variant, tmp_path
):
    _result, nb, _ = play(fake_model_server, scenarios.BIG_OUTPUT, variant, tmp_path)
    root = [r for r in fake_model_server.requests if r.model == ROOT]
    grew = len(json.dumps(root[1].body)) - len(json.dumps(root[0].body))
    assert 5000 < grew < 5000 + 1500  # the 2 MB print, shown as at most max_output_chars + a note
    first = code_cells(nb)[0]
    assert first.metadata.rlm.exec.output_chars == 2_000_001 + len("THE END\n")
    assert first.metadata.rlm.exec.shown.rstrip().endswith("THE END")  # the real tail
    assert "THE END" in json.dumps(root[1].body)
    kept = sum(len(o.get("text", "")) for o in first.outputs)
    assert kept < 1_100_000 and any("truncated" in o.get("text", "") for o in first.outputs)
    assert first.outputs[-1].text.endswith("THE END\n")  # the real tail, after the marker


def test_no_secret_reaches_the_kernel(fake_model_server, tmp_path):
    env = dict(os.environ)
    secrets = {k: v for k, v in scenarios.SECRETS.items() if v}
    env.update(secrets)
    result, nb, _ = play(fake_model_server, scenarios.ENV_CHECK, "anthropic-cli", tmp_path, env)
    assert result["answer"] == "[]"
    written = (tmp_path / "run.ipynb").read_text()
    for value in [*secrets.values(), fake_model_server.api_key]:
        assert value not in written
    shown = code_cells(nb)[0].outputs[0].text
    assert "PATH" in shown and "ANTHROPIC_BASE_URL" not in shown
