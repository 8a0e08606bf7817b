"""The fields of a model call, end to end: usage a server does not report, stop reasons that reach
the kernel's code, sampling per role, the step retried once, prices and concurrency on the command
line, and what a custom LLM must return. Real SDKs against the fake model server, real kernels.
"""

from __future__ import annotations

import asyncio
import json

import nbformat
import pytest

from rlm_kernel import RLM, verify, viewer
from rlm_kernel.cli import main
from rlm_kernel.errors import UsageError
from rlm_kernel.llm import pricing
from rlm_kernel.magic import parse_rlm_line
from rlm_kernel.testing import ScriptedModel
from rlm_kernel.types import Completion, Usage, tokens_text

LONG_ANSWER = "The sub-model goes on and on about the context. " * 40


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "context.txt"
    path.write_text("some text\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def forget_prices():
    yield
    pricing.clear_prices()


def _run_args(text_file, out, *models):
    argv = ["run", "--question", "q", "--context", str(text_file), "--out", str(out)]
    for flag, model in zip(("--model", "--sub-model"), models, strict=False):
        argv += [flag, model]
    return argv


def _steps(nb):
    return [c.metadata.rlm for c in nb.cells if "rlm-step" in c.metadata.get("tags", [])]


def _code_cell(nb):
    return next(c for c in nb.cells if "rlm-code" in c.metadata.get("tags", []))


def _subcalls(nb):
    return [
        s
        for c in nb.cells
        if c.cell_type == "code"
        for s in c.metadata.get("rlm", {}).get("subcalls", [])
    ]


# -- usage a server does not report ---------------------------------------------------------


def test_usage_sums_say_what_is_unknown():
    known = Usage(calls=1, input_tokens=10, output_tokens=5)
    assert tokens_text([known]) == "15 tokens"
    assert tokens_text([Usage.unknown()]) == "tokens unknown"
    assert tokens_text([known, Usage.unknown()]) == "≥ 15 tokens"
    one = Usage.unknown().to_dict()
    assert one["input_tokens"] is None and one["output_tokens"] is None
    assert Usage.from_dict(one) == Usage.unknown()
    both = Usage()
    both.add(known)
    both.add(Usage.unknown())
    assert both.to_dict()["input_tokens"] == 10 and both.to_dict()["unknown_calls"] == 1
    assert Usage.from_dict(both.to_dict()) == both
    assert "unknown_calls" not in known.to_dict()  # unchanged for servers that report usage


def test_unreported_usage_is_null_in_json_notebook_progress_and_view(
    capsys, text_file, tmp_path, fake_model_server
):
    fake_model_server.add_model("root", ScriptedModel(["```repl\nprint(1)\n```", "FINAL(done)"]))
    fake_model_server.fault("no_usage", times=100, api="openai")
    argv = _run_args(text_file, tmp_path / "a.ipynb", "openai:root")
    # A price is given, but tokens that are not known cannot be priced.
    argv += ["--price", "openai:root=1,2", "--max-tokens", "100", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    root = out["usage"]["root"]
    assert root["calls"] == 2 and root["unknown_calls"] == 2
    assert root["input_tokens"] is None and root["output_tokens"] is None
    assert out["cost_usd"] is None
    nb = nbformat.read(out["notebook"], as_version=4)
    assert nb.metadata.rlm.usage.root.output_tokens is None
    assert all(step.usage.output_tokens is None for step in _steps(nb))
    assert "unknown: the server reported none" in nb.cells[0].source
    assert "tokens unknown" in viewer.summarize(out["notebook"], width=120)

    fake_model_server.add_model("root", ScriptedModel(["FINAL(done)"]))
    argv = [*_run_args(text_file, tmp_path / "b.ipynb", "openai:root"), "--max-tokens", "100"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "step 1/30: ran 0 code blocks, 0 sub-calls · total tokens unknown" in err


# -- the stop reason reaches the code ----------------------------------------------------------


CHECK_CUT = """```repl
a = llm_query("tell me everything")
b, = llm_query_batched(["short"])
import json
print(a.truncated, a.stop_reason, b.truncated, json.dumps([a[:5]]), type(a + "") is str)
```
FINAL(ok)"""


def test_a_cut_subcall_is_known_to_the_code_and_replays_the_same(tmp_path, fake_model_server):
    fake_model_server.add_model("root", ScriptedModel([CHECK_CUT]))
    fake_model_server.add_model(
        "sub", lambda messages: LONG_ANSWER if "everything" in messages[-1]["content"] else "ok"
    )
    rlm = RLM("anthropic:root", "anthropic:sub", sub_max_tokens=20, display=False)
    result = rlm.run("q", context="text", notebook=tmp_path / "run.ipynb")
    assert result.status == "answered"
    nb = nbformat.read(result.notebook, as_version=4)
    code = _code_cell(nb)
    printed = "".join(o.get("text", "") for o in code.outputs)
    assert printed == 'True max_tokens False ["The s"] True\n'
    assert [s["stop_reason"] for s in _subcalls(nb)] == ["max_tokens", "end_turn"]
    report = asyncio.run(verify.areplay_notebook(result.notebook))
    assert report.status == "reproduced", report.summary()


# -- sampling per role -------------------------------------------------------------------------


def test_sampling_per_role_reaches_both_sdks_and_the_notebook(
    capsys, text_file, tmp_path, fake_model_server
):
    fake_model_server.add_model(
        "root", ScriptedModel(['```repl\nprint(llm_query("hi"))\n```\nFINAL(done)'])
    )
    fake_model_server.add_model("sub", "hello")
    argv = _run_args(text_file, tmp_path / "s.ipynb", "openai:root", "anthropic:sub")
    argv += ["--temperature", "0.3", "--seed", "7", "--sub-temperature", "0", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    bodies = {r.model: r.body for r in fake_model_server.requests}
    assert (bodies["root"]["temperature"], bodies["root"]["seed"]) == (0.3, 7)
    assert bodies["sub"]["temperature"] == 0 and "seed" not in bodies["sub"]
    meta = nbformat.read(out["notebook"], as_version=4).metadata.rlm
    assert meta.sampling == {"root": {"temperature": 0.3, "seed": 7}, "sub": {"temperature": 0}}


def test_sampling_not_set_is_not_sent(tmp_path, fake_model_server):
    fake_model_server.add_model("root", ScriptedModel(["FINAL(done)"]))
    RLM("openai:root", display=False).run("q", context="t", notebook=tmp_path / "n.ipynb")
    (request,) = fake_model_server.requests
    assert "temperature" not in request.body and "seed" not in request.body


class _NoSampling:
    name = "custom:plain"

    async def complete(self, messages, *, max_tokens):
        return Completion(text="FINAL(x)", model=self.name)


def test_a_custom_llm_without_sampling_keywords_is_a_usage_error_when_they_are_set(tmp_path):
    with pytest.raises(UsageError, match=r"root model custom:plain takes no temperature"):
        RLM(_NoSampling(), display=False, temperature=0.5).run("q", context="t")
    seen = []

    def model(messages, temperature=None):
        seen.append(temperature)
        return "FINAL(x)"

    result = RLM(model, display=False, temperature=0.5).run(
        "q", context="t", notebook=tmp_path / "f.ipynb"
    )
    assert result.answer == "x" and seen == [0.5]
    # Unset, a model without the keywords runs as before.
    RLM(_NoSampling(), display=False).run("q", context="t", notebook=tmp_path / "g.ipynb")


def test_bad_sampling_values_are_one_line_usage_errors(capsys, text_file, tmp_path):
    with pytest.raises(SystemExit) as e:
        main([*_run_args(text_file, tmp_path / "x.ipynb"), "--temperature", "hot"])
    assert e.value.code == 2
    assert "argument --temperature: invalid float value: 'hot'" in capsys.readouterr().err
    with pytest.raises(UsageError, match="temperature must be a number from 0 to 2"):
        RLM("openai:m", temperature=3)


# -- the step retried once ----------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_root_reply_broken_in_transport_is_asked_for_once_more(
    provider, tmp_path, fake_model_server
):
    fake_model_server.add_model("root", ScriptedModel(["FINAL(done)", "FINAL(done)"]))
    fake_model_server.fault("malformed", times=1)
    rlm = RLM(f"{provider}:root", display=False)
    result = rlm.run("q", context="t", notebook=tmp_path / "r.ipynb")
    assert result.status == "answered" and result.answer == "done"
    assert len(fake_model_server.requests) == 2
    (step,) = _steps(nbformat.read(result.notebook, as_version=4))
    assert step.step_retry.attempts == 2
    assert "not valid" in step.step_retry.first_error


def test_a_step_failing_twice_ends_the_run_saying_so(tmp_path, fake_model_server):
    fake_model_server.add_model("root", ScriptedModel(["FINAL(done)"] * 2))
    fake_model_server.fault("empty", times=2)
    result = RLM("openai:root", display=False).run("q", context="t", notebook=tmp_path / "e.ipynb")
    assert result.status == "error"
    assert "retried once" in result.error and "context window" in result.error
    assert len(fake_model_server.requests) == 2


def test_an_http_error_is_not_retried_by_the_step(tmp_path, fake_model_server):
    fake_model_server.add_model("root", ScriptedModel(["FINAL(done)"]))
    fake_model_server.fail(404, times=1)
    result = RLM("anthropic:root", display=False).run(
        "q", context="t", notebook=tmp_path / "h.ipynb"
    )
    assert result.status == "error" and "HTTP 404" in result.error
    assert len(fake_model_server.requests) == 1
    nb = nbformat.read(result.notebook, as_version=4)
    assert nb.metadata.rlm.status == "error"


# -- prices and concurrency on the command line ---------------------------------------------------


def test_price_on_the_command_line_prices_a_local_model(
    capsys, text_file, tmp_path, fake_model_server
):
    fake_model_server.add_model("gpt-4o-mini", ScriptedModel(["FINAL(done)", "FINAL(done)"]))
    base = [*_run_args(text_file, tmp_path / "p.ipynb", "openai:gpt-4o-mini"), "--json"]
    assert main(base) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cost_usd"] is None  # an official name off the official endpoint: unpriced
    step = viewer.trajectory(nbformat.read(out["notebook"], as_version=4))["steps"][0]
    assert step["cost_usd"] is None  # the viewer keeps the recorded cost, it does not reprice
    argv = [*base, "--force", "--price", "openai:gpt-4o-mini=1,2", "--max-concurrency", "3"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    usage = Usage.from_dict(out["usage"]["root"])
    assert out["cost_usd"] == pytest.approx(
        (usage.input_tokens * 1 + usage.output_tokens * 2) / 1e6, abs=1e-6
    )
    assert nbformat.read(out["notebook"], as_version=4).metadata.rlm.limits.max_concurrency == 3


@pytest.mark.parametrize(
    ("price", "message"),
    [
        ("openai:m", "a price is MODEL=IN,OUT"),
        ("openai:m=1", "a price is MODEL=IN,OUT"),
        ("openai:m=a,b", "must be numbers"),
        ("openai:m=-1,2", "must be numbers >= 0"),
    ],
)
def test_bad_price_is_a_one_line_usage_error(capsys, text_file, tmp_path, price, message):
    with pytest.raises(SystemExit) as e:
        main([*_run_args(text_file, tmp_path / "x.ipynb"), "--price", price])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_magic_takes_sampling_prices_and_concurrency():
    args = parse_rlm_line(
        "--context doc --temperature 0.2 --sub-seed 3 --price openai:m=0.5,1 --max-concurrency 4"
    )
    assert (args.temperature, args.sub_seed, args.max_concurrency) == (0.2, 3, 4)
    assert args.prices == [("openai:m", 0.5, 1.0)]


# -- what a custom LLM returns; replies that JSON cannot carry ----------------------------------


class _ReturnsText:
    name = "custom:text"

    async def complete(self, messages, *, max_tokens):
        return "FINAL(x)"


def test_a_custom_llm_returning_text_is_a_clear_type_error(tmp_path):
    path = tmp_path / "t.ipynb"
    with pytest.raises(TypeError, match=r"_ReturnsText.complete\(\).*returned str, not a"):
        RLM(_ReturnsText(), display=False).run("q", context="t", notebook=path)
    assert nbformat.read(path, as_version=4).metadata.rlm.status == "error"


def test_a_lone_surrogate_in_replies_does_not_end_the_run(tmp_path, fake_model_server):
    fake_model_server.add_model(
        "root",
        ScriptedModel(
            ['Half a character: \ud83d.\n```repl\nr = llm_query("x")\nprint(r)\n```\nFINAL(ok)']
        ),
    )
    fake_model_server.add_model("sub", "broken \udc00 text")
    result = RLM("openai:root", "anthropic:sub", display=False).run(
        "q", context="t", notebook=tmp_path / "u.ipynb"
    )
    assert result.status == "answered", result.error
    nb = nbformat.read(result.notebook, as_version=4)
    assert "Half a character: \ufffd." in _steps(nb)[0].raw
    code = _code_cell(nb)
    assert "broken \ufffd text" in "".join(o.get("text", "") for o in code.outputs)


def test_the_official_anthropic_api_is_sent_no_sampling_the_sdk_does_not_declare():
    import anthropic

    from rlm_kernel.llm import check_sampling
    from rlm_kernel.llm.anthropic import AnthropicLLM

    official = AnthropicLLM("claude-x", client=anthropic.AsyncAnthropic(api_key="k"))
    assert official.official
    with pytest.raises(UsageError, match=r"sub model anthropic:claude-x takes no seed"):
        check_sampling(official, {"seed": 1}, role="sub")
    local = AnthropicLLM(
        "m", client=anthropic.AsyncAnthropic(api_key="k", base_url="http://127.0.0.1:9")
    )
    check_sampling(local, {"seed": 1, "temperature": 0.5}, role="root")
