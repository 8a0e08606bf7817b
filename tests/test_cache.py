"""The model-call cache and the prompt-cache markers, through the real SDKs and a real kernel."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import nbformat
import pytest

from rlm_kernel.errors import ModelError
from rlm_kernel.llm import prompt_cache
from rlm_kernel.llm.anthropic import AnthropicLLM
from rlm_kernel.llm.cache import CachedLLM, CacheError, CallCache, request_digest
from rlm_kernel.record import read
from rlm_kernel.run import RLM
from rlm_kernel.testing import ScriptedModel
from rlm_kernel.types import Completion, Usage
from rlm_kernel.viewer import summarize

USER = [{"role": "user", "content": "What is 6 times 7?"}]


class Counting:
    """A model that counts its calls, takes sampling keywords and fails when told to."""

    def __init__(self, name: str = "test:counting") -> None:
        self.name = name
        self.calls: list[dict] = []
        self.fail = False

    async def complete(self, messages, *, max_tokens, **sampling):
        self.calls.append({"messages": messages, "max_tokens": max_tokens, **sampling})
        if self.fail:
            raise ModelError(self.name, "HTTP 529 overloaded_error: try later")
        usage = Usage(calls=1, input_tokens=11, output_tokens=3)
        return Completion(
            f"answer {len(self.calls)}", self.name, usage, cost_usd=0.25, stop_reason="end_turn"
        )


def ask(llm, messages=USER, max_tokens=100, **sampling):
    return asyncio.run(llm.complete(messages, max_tokens=max_tokens, **sampling))


# -- the cache on its own -----------------------------------------------------------------------


def test_a_second_identical_call_is_answered_by_the_cache_at_no_cost(tmp_path):
    model = Counting()
    cache = CallCache.default_for(tmp_path)
    assert cache.path == tmp_path / ".rlm-cache.sqlite"
    first = ask(cache.wrap(model))
    again = cache.wrap(model)
    assert isinstance(again, CachedLLM) and again.name == model.name
    hit = ask(again)
    assert len(model.calls) == 1
    assert (first.cached, hit.cached) == (False, True)
    assert hit.text == first.text == "answer 1"
    assert hit.stop_reason == "end_turn"
    assert hit.cost_usd == 0.0 and first.cost_usd == 0.25
    assert hit.usage == first.usage  # kept for information
    assert (cache.hits, cache.misses, cache.stored, len(cache)) == (1, 1, 1, 1)


def test_a_changed_model_prompt_or_parameter_misses(tmp_path):
    model = Counting()
    cache = CallCache(tmp_path / "calls.sqlite")
    ask(cache.wrap(model))
    ask(cache.wrap(model), max_tokens=101)
    ask(cache.wrap(model), messages=[{"role": "user", "content": "What is 6 times 8?"}])
    ask(cache.wrap(model), temperature=0.5)
    ask(cache.wrap(model), temperature=0.5, seed=3)
    ask(cache.wrap(Counting("test:other")))
    assert len(model.calls) == 5
    assert model.calls[3]["temperature"] == 0.5  # sampling keywords are forwarded unchanged
    assert model.calls[4]["seed"] == 3
    # The same again, in another order of keywords, all hit.
    ask(cache.wrap(model), seed=3, temperature=0.5)
    ask(cache.wrap(model), temperature=0.5)
    ask(cache.wrap(model), temperature=None)  # None is the same as not giving it
    assert len(model.calls) == 5


def test_repeated_calls_in_one_run_get_their_own_answers(tmp_path):
    # Asking the same prompt three times (to vote) must not collapse to one answer.
    model = Counting()
    cache = CallCache(tmp_path / "c.sqlite")
    wrapped = cache.wrap(model)
    assert [ask(wrapped).text for _ in range(3)] == ["answer 1", "answer 2", "answer 3"]
    again = cache.wrap(model)
    assert [ask(again).text for _ in range(4)] == ["answer 1", "answer 2", "answer 3", "answer 4"]
    assert len(model.calls) == 4


def test_failed_calls_are_not_stored(tmp_path):
    model = Counting()
    model.fail = True
    cache = CallCache(tmp_path / "c.sqlite")
    with pytest.raises(ModelError):
        ask(cache.wrap(model))
    assert len(cache) == 0
    model.fail = False
    assert ask(cache.wrap(model)).cached is False
    assert len(model.calls) == 2


def test_the_key_covers_what_decides_the_answer():
    base = request_digest("a:m", 10, USER, {})
    assert base == request_digest("a:m", 10, [dict(USER[0], hint="x")], {"seed": None})
    assert len({
        base,
        request_digest("a:n", 10, USER, {}),
        request_digest("a:m", 11, USER, {}),
        request_digest("a:m", 10, USER, {"temperature": 0.0}),
        request_digest("a:m", 10, [{"role": "system", "content": "What is 6 times 7?"}], {}),
    }) == 5  # fmt: skip


def test_cache_files_hold_no_credentials(fake_model_server, tmp_path):
    fake_model_server.add_model("m", "forty-two")
    cache = CallCache(tmp_path / "c.sqlite")
    llm = cache.wrap(AnthropicLLM("m"))

    async def go():
        try:
            return await llm.complete(USER, max_tokens=50)
        finally:
            await llm.aclose()

    assert asyncio.run(go()).text == "forty-two"
    cache.close()
    key = os.environ["ANTHROPIC_API_KEY"].encode()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"forty-two" in stored and key not in stored


def test_a_corrupt_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all " * 300)
    with pytest.raises(CacheError) as info:
        CallCache(bad)
    message = str(info.value)
    assert "\n" not in message and str(bad) in message and "--no-cache" in message
    assert "corrupt" in message


def test_another_database_is_not_taken_for_a_cache(tmp_path):
    other = tmp_path / "app.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(CacheError, match="not a model-call cache"):
        CallCache(other)


def test_an_unwritable_place_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="cannot use the model-call cache") as info:
        CallCache(blocker / "c.sqlite")
    assert "\n" not in str(info.value)
    with pytest.raises(CacheError, match="directory"):
        CallCache(tmp_path)


def test_threads_and_processes_share_one_file(tmp_path):
    path = tmp_path / "shared.sqlite"
    CallCache(path).close()
    script = textwrap.dedent(
        """
        import sys
        from rlm_kernel.llm.cache import CallCache
        from rlm_kernel.types import Completion
        cache = CallCache(sys.argv[1])
        for i in range(150):
            cache.put(f"{sys.argv[2]}-{i}", Completion(f"text {i}", "test:m"))
            assert cache.get(f"{sys.argv[2]}-{i}").text == f"text {i}"
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), name]) for name in "ab"]
    cache = CallCache(path)
    model = Counting()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            llm = cache.wrap(model)
            for i in range(20):
                ask(llm, messages=[{"role": "user", "content": f"thread {n} prompt {i}"}])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert not errors
    assert len(cache) == 2 * 150 + 4 * 20


# -- prompt-cache markers ---------------------------------------------------------------------


def test_shared_prefix_stops_at_a_word_or_line():
    assert prompt_cache.shared_prefix(["only one"]) == 0
    assert prompt_cache.shared_prefix(["Doc:\nabc one", "Doc:\nabc two"]) == len("Doc:\nabc ")
    assert prompt_cache.shared_prefix(["abcdef", "abcxyz"]) == 0
    assert prompt_cache.shared_prefix(["same text", "same text"]) == len("same ")


def test_a_shared_prefix_is_marked_only_when_later_requests_read_it():
    assert not prompt_cache.worth_marking(batch=4, concurrency=16)  # all written at once
    assert not prompt_cache.worth_marking(batch=16, concurrency=16)
    assert prompt_cache.worth_marking(batch=40, concurrency=16)
    assert prompt_cache.worth_marking(batch=8, concurrency=2)


def test_a_one_off_prompt_carries_no_marker_and_a_conversation_does(fake_model_server):
    fake_model_server.add_model("m", "ok")
    llm = AnthropicLLM("m", stream=False)
    system = {"role": "system", "content": "Be brief."}
    long_prefix = "A shared document line.\n" * 400

    async def go():
        try:
            await llm.complete(USER, max_tokens=20)
            await llm.complete([system, *USER], max_tokens=20)
            token = prompt_cache.SHARED_PREFIX.set(len(long_prefix))
            try:
                await llm.complete([{"role": "user", "content": long_prefix + "Q1"}], max_tokens=20)
            finally:
                prompt_cache.SHARED_PREFIX.reset(token)
            token = prompt_cache.SHARED_PREFIX.set(len("short "))
            try:
                await llm.complete([{"role": "user", "content": "short Q2"}], max_tokens=20)
            finally:
                prompt_cache.SHARED_PREFIX.reset(token)
        finally:
            await llm.aclose()

    asyncio.run(go())
    one_off, root, batched, short = (r.body for r in fake_model_server.requests)
    assert "cache_control" not in json.dumps(one_off)
    assert one_off["messages"] == USER
    assert root["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert root["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    head, tail = batched["messages"][0]["content"]
    assert head == {"type": "text", "text": long_prefix, "cache_control": {"type": "ephemeral"}}
    assert tail == {"type": "text", "text": "Q1"}
    assert "cache_control" not in json.dumps(short)  # too short for the cache to take


# -- whole runs -------------------------------------------------------------------------------

ROOT, SUB = "root-model", "sub-model"
SHARED = "Read this document carefully.\n" + "The inventory lists apples and pears.\n" * 200
CODE = f"""```python
one = llm_query("How many fruits are named?")
shared = {SHARED!r}
many = llm_query_batched([shared + f"Question {{i}}: which fruit comes first?" for i in range(6)])
print(one, len(many), many[0])
```"""


def scripted(server):
    root = ScriptedModel([CODE, "FINAL(two fruits)"])
    sub = ScriptedModel([lambda messages: f"sub answer {len(messages[0]['content'])}"] * 7)
    server.add_model(ROOT, root)
    server.add_model(SUB, sub)
    return root, sub


def run_once(tmp_path, name, cache, question="Which fruits are listed?", **limits):
    context = tmp_path / "context.txt"
    context.write_text("apples\npears\n")
    rlm = RLM(
        AnthropicLLM(ROOT, stream=False), AnthropicLLM(SUB), cache=cache, max_concurrency=2,
        **limits,
    )  # fmt: skip
    return rlm.run(question, context, notebook=tmp_path / name)


def code_cell(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    nbformat.validate(nb)
    return nb, next(c for c in nb.cells if "rlm-code" in c.metadata.get("tags", []))


@pytest.mark.slow
def test_a_second_identical_run_makes_no_requests_and_costs_nothing(fake_model_server, tmp_path):
    scripted(fake_model_server)
    cache = tmp_path / "calls.sqlite"
    first = run_once(tmp_path, "first.ipynb", cache)
    assert first.status == "answered" and first.cache_hits == 0
    sent = list(fake_model_server.requests)
    assert len(sent) == 2 + 7  # two root turns, one llm_query, six batched

    # Markers only on what is re-read: the root's conversation and the batch's shared prefix.
    roots = [r.body for r in sent if r.model == ROOT]
    subs = [r.body for r in sent if r.model == SUB]
    assert all(r["system"][0]["cache_control"] == {"type": "ephemeral"} for r in roots)
    single = [s for s in subs if isinstance(s["messages"][0]["content"], str)]
    batched = [s for s in subs if not isinstance(s["messages"][0]["content"], str)]
    assert len(single) == 1 and "cache_control" not in json.dumps(single[0])
    assert len(batched) == 6
    for body in batched:
        head, tail = body["messages"][0]["content"]
        assert head["cache_control"] == {"type": "ephemeral"}
        assert head["text"] == SHARED + "Question "  # cut after the last shared word
        assert "cache_control" not in tail and tail["text"][0].isdigit()

    second = run_once(tmp_path, "second.ipynb", cache)
    assert len(fake_model_server.requests) == len(sent)  # not one request more
    assert second.status == "answered" and second.answer == first.answer == "two fruits"
    assert second.cost_usd == 0.0
    assert second.cache_hits == 9
    assert second.usage["root"].total_tokens == second.usage["sub"].total_tokens == 0

    nb, cell = code_cell(tmp_path / "second.ipynb")
    steps = [c for c in nb.cells if "rlm-step" in c.metadata.get("tags", [])]
    assert all(c.metadata["rlm"]["cached"] is True for c in steps)
    assert all(s["cached"] is True for s in cell.metadata["rlm"]["subcalls"])
    assert cell.outputs == code_cell(tmp_path / "first.ipynb")[1].outputs
    assert nb.metadata["rlm"]["cache_hits"] == 9 and nb.metadata["rlm"]["cost_usd"] == 0.0
    assert "9 model calls answered by the model-call cache" in nb.cells[0].source
    _, first_cell = code_cell(tmp_path / "first.ipynb")
    assert not any(s["cached"] for s in first_cell.metadata["rlm"]["subcalls"])
    text = summarize(tmp_path / "second.ipynb")
    assert "9 cached" in text and "(cached)" in text
    # The record still reads, and replays from its own answers.
    assert read(tmp_path / "second.ipynb").steps[0].code[0].subcalls[0].cached is True


@pytest.mark.slow
def test_a_changed_question_misses_and_batched_hits_share_the_cache(fake_model_server, tmp_path):
    scripted(fake_model_server)
    cache = CallCache(tmp_path / "calls.sqlite")
    run_once(tmp_path, "first.ipynb", cache)
    before = len(fake_model_server.requests)
    root, _ = scripted(fake_model_server)  # fresh scripts: any call that misses must be answered
    result = run_once(tmp_path, "other.ipynb", cache, question="Which fruits, again?")
    new = fake_model_server.requests[before:]
    # The root's conversation changed, so both root turns miss; the sub-calls are the same
    # prompts with the same parameters, and all seven (six of them concurrent) hit.
    assert [r.model for r in new] == [ROOT, ROOT]
    assert len(root.calls) == 2
    assert result.status == "answered" and result.cache_hits == 7
    _, cell = code_cell(tmp_path / "other.ipynb")
    assert [s["cached"] for s in cell.metadata["rlm"]["subcalls"]] == [True] * 7


@pytest.mark.slow
def test_cli_run_with_cache_then_no_cache_and_a_corrupt_file(fake_model_server, tmp_path):
    scripted(fake_model_server)
    context = tmp_path / "context.txt"
    context.write_text("apples\npears\n")

    def cli(*extra):
        args = [
            sys.executable, "-m", "rlm_kernel", "run", "--question", "Which fruits?",
            "--context", str(context), "--model", f"anthropic:{ROOT}",
            "--sub-model", f"anthropic:{SUB}", "--max-concurrency", "2", "--json", *extra,
        ]  # fmt: skip
        return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    cache = str(tmp_path / "cli-cache.sqlite")
    first = cli("--cache", cache, "--out", str(tmp_path / "a.ipynb"))
    assert first.returncode == 0, first.stderr
    sent = len(fake_model_server.requests)
    second = cli("--cache", cache, "--out", str(tmp_path / "b.ipynb"))
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result["cost_usd"] == 0.0 and result["cache_hits"] == 9
    assert len(fake_model_server.requests) == sent

    scripted(fake_model_server)
    third = cli("--no-cache", "--out", str(tmp_path / "c.ipynb"))
    assert third.returncode == 0, third.stderr
    assert json.loads(third.stdout)["cache_hits"] == 0
    assert len(fake_model_server.requests) == sent + 9

    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"\x00garbage" * 1000)
    failed = cli("--cache", str(bad), "--out", str(tmp_path / "d.ipynb"))
    assert failed.returncode == 2
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "model-call cache" in lines[0] and "Traceback" not in failed.stderr
    assert not (tmp_path / "d.ipynb").exists()


def test_help_names_the_cache_options():
    from rlm_kernel.cli import build_parser

    parser = build_parser()
    for command in ("run", "resume"):
        sub = parser._subparsers._group_actions[0].choices[command]
        text = sub.format_help()
        assert "--cache PATH" in text and "--no-cache" in text
    with pytest.raises(SystemExit):
        parser.parse_args(
            ["run", "--question", "q", "--context", "x", "--cache", "a", "--no-cache"]
        )


def test_rlm_refuses_a_corrupt_cache_before_anything_runs(tmp_path):
    bad = Path(tmp_path / "bad.sqlite")
    bad.write_bytes(b"garbage" * 1000)
    with pytest.raises(CacheError):
        RLM(lambda messages: "FINAL(x)", cache=bad)


@pytest.mark.slow
def test_a_fork_asks_the_cache_first(fake_model_server, tmp_path):
    scripted(fake_model_server)
    cache = CallCache(tmp_path / "calls.sqlite")
    run_once(tmp_path, "first.ipynb", cache)
    sent = len(fake_model_server.requests)
    rlm = RLM(AnthropicLLM(ROOT, stream=False), AnthropicLLM(SUB), cache=cache, max_concurrency=2)
    fork = rlm.resume(tmp_path / "first.ipynb", 2, out=tmp_path / "fork.ipynb")
    # Step 1 is replayed from the notebook; step 2's root call is the one made before.
    assert len(fake_model_server.requests) == sent
    assert fork.status == "answered" and fork.answer == "two fruits"
    assert fork.cache_hits == 1 and fork.cost_usd == 0.0


def test_cache_keys_ignore_the_run_status_lines():
    from rlm_kernel.prompts import cache_view

    live = "out\n\nSpent: step 1 of 30 · 2 sub-calls · $0.01 · 4 s.\nYour variables: a, b.\n\nQ?"
    assert cache_view(live) == cache_view("out\n\nQ?") == "out\n\nQ?"
    assert cache_view("- 60 s for the whole run (12 s left).") == "- 60 s for the whole run ."
    assert cache_view("out\n\nQ?") != cache_view("other\n\nQ?")
