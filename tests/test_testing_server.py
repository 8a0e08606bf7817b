"""The fake model server, driven by the real anthropic and openai SDKs and by raw HTTP."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import time

import anthropic
import openai
import pytest

from rlm_kernel.testing import FakeModelServer, ScriptedModel, estimate_tokens

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture
def server():
    with FakeModelServer() as s:
        yield s


def claude(server, **kwargs):
    return anthropic.Anthropic(
        base_url=server.anthropic_base_url, api_key=kwargs.pop("api_key", server.api_key), **kwargs
    )


def gpt(server, **kwargs):
    return openai.OpenAI(
        base_url=server.openai_base_url, api_key=kwargs.pop("api_key", server.api_key), **kwargs
    )


def post(server, path, body, headers=None):
    """One raw HTTP request: (status, headers, body bytes)."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(
            "POST", path, json.dumps(body), {"content-type": "application/json", **(headers or {})}
        )
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# -- replies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_anthropic_scripted_replies_in_order(server, stream):
    model = ScriptedModel(["first", "second reply"])
    server.add_model("claude-test", model)
    client = claude(server)
    texts = []
    for _ in range(2):
        if stream:
            with client.messages.stream(model="claude-test", max_tokens=50, messages=USER) as s:
                msg = s.get_final_message()
        else:
            msg = client.messages.create(model="claude-test", max_tokens=50, messages=USER)
        assert msg.stop_reason == "end_turn"
        texts.append(msg.content[0].text)
    assert texts == ["first", "second reply"]
    assert [r.stream for r in server.requests] == [stream, stream]
    assert model.remaining == 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_openai_scripted_replies_in_order(server, stream):
    server.add_model("gpt-test", ScriptedModel(["one", "two"]))
    client = gpt(server)
    texts = []
    for _ in range(2):
        if stream:
            with client.chat.completions.stream(
                model="gpt-test", messages=USER, stream_options={"include_usage": True}
            ) as s:
                for _event in s:
                    pass
                done = s.get_final_completion()
        else:
            done = client.chat.completions.create(model="gpt-test", messages=USER)
        assert done.choices[0].finish_reason == "stop"
        assert done.usage.completion_tokens == 1
        texts.append(done.choices[0].message.content)
    assert texts == ["one", "two"]


def test_reply_functions_see_system_first_and_plain_strings(server):
    seen = []

    def rule(messages):
        seen.append(messages)
        return f"{len(messages)} messages, last: {messages[-1]['content']}"

    scripted = ScriptedModel([lambda m: "scripted " + m[0]["content"]])
    server.add_model("rule", rule)
    server.add_model("scripted", scripted)
    server.add_model("fixed", "always this")
    client = claude(server)
    msg = client.messages.create(
        model="rule",
        max_tokens=100,
        system=[{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": [{"type": "text", "text": "q2"}]},
        ],
    )
    assert msg.content[0].text == "4 messages, last: q2"
    assert seen[0] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    out = gpt(server).chat.completions.create(
        model="scripted", messages=[{"role": "system", "content": "sys"}, *USER]
    )
    assert out.choices[0].message.content == "scripted sys"
    assert scripted.calls == [[{"role": "system", "content": "sys"}, *USER]]
    for _ in range(3):  # a fixed reply answers any number of calls
        msg = client.messages.create(model="fixed", max_tokens=10, messages=USER)
        assert msg.content[0].text == "always this"


def test_streams_follow_the_real_event_order(server):
    text = "The quick brown fox jumps over the lazy dog. " * 4
    server.add_model("m", text)
    status, headers, raw = post(
        server,
        "/v1/messages",
        {"model": "m", "max_tokens": 500, "stream": True, "messages": USER},
        {"x-api-key": server.api_key},
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [e for e in raw.decode().split("\n\n") if e]
    names = [e.split("\n")[0].removeprefix("event: ") for e in events]
    deltas = names.count("content_block_delta")
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert deltas > 1
    data = [json.loads(e.split("data: ", 1)[1]) for e in events]
    assert "".join(d["delta"]["text"] for d in data if d["type"] == "content_block_delta") == text
    assert data[0]["message"]["usage"]["input_tokens"] == estimate_tokens(len("hello"))
    assert data[-2]["usage"]["output_tokens"] == estimate_tokens(len(text))

    status, _, raw = post(
        server,
        "/v1/chat/completions",
        {"model": "m", "stream": True, "stream_options": {"include_usage": True}, "messages": USER},
        {"authorization": f"Bearer {server.api_key}"},
    )
    chunks = [e.removeprefix("data: ") for e in raw.decode().split("\n\n") if e]
    assert chunks[-1] == "[DONE]"
    parsed = [json.loads(c) for c in chunks[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in parsed)
    assert [c["choices"][0]["finish_reason"] for c in parsed[:-1]][-1] == "stop"
    assert parsed[-1]["choices"] == [] and parsed[-1]["usage"]["completion_tokens"] > 0
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in parsed[:-1]) == text


def test_anthropic_stream_events_parse_with_the_sdk(server):
    server.add_model("m", "streamed " * 20)
    with claude(server).messages.stream(model="m", max_tokens=500, messages=USER) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == "streamed " * 20
    assert final.usage.output_tokens == estimate_tokens(len("streamed " * 20))


def test_max_tokens_cuts_the_reply(server):
    server.add_model("m", "x" * 400)
    msg = claude(server).messages.create(model="m", max_tokens=10, messages=USER)
    assert (msg.content[0].text, msg.stop_reason, msg.usage.output_tokens) == (
        "x" * 40,
        "max_tokens",
        10,
    )
    out = gpt(server).chat.completions.create(model="m", max_completion_tokens=5, messages=USER)
    assert (out.choices[0].message.content, out.choices[0].finish_reason) == ("x" * 20, "length")


# -- usage and caching -----------------------------------------------------------------------


def test_anthropic_cache_simulation_reads_a_growing_prefix(server):
    server.add_model("m", "a" * 40)
    client = claude(server)
    system = [{"type": "text", "text": "s" * 4000, "cache_control": {"type": "ephemeral"}}]

    def turn(messages):
        *head, last = messages
        marked = {
            **last,
            "content": [
                {"type": "text", "text": last["content"], "cache_control": {"type": "ephemeral"}}
            ],
        }
        return client.messages.create(
            model="m", max_tokens=100, system=system, messages=[*head, marked]
        ).usage

    first = turn([{"role": "user", "content": "u" * 400}])
    assert (first.cache_read_input_tokens, first.cache_creation_input_tokens) == (0, 1100)
    assert first.input_tokens == 0
    second = turn(
        [
            {"role": "user", "content": "u" * 400},
            {"role": "assistant", "content": "a" * 40},
            {"role": "user", "content": "v" * 400},
        ]
    )
    assert second.cache_read_input_tokens == 1100  # the whole first turn
    assert second.cache_creation_input_tokens == 110
    # The same prompt again is read in full; without markers nothing is cached.
    unmarked = client.messages.create(model="m", max_tokens=100, messages=USER).usage
    assert (unmarked.cache_read_input_tokens, unmarked.cache_creation_input_tokens) == (0, 0)
    assert unmarked.input_tokens == estimate_tokens(len("hello"))
    other_model = "n"
    server.add_model(other_model, "b")
    cold = client.messages.create(
        model=other_model, max_tokens=10, system=system, messages=USER
    ).usage
    assert cold.cache_read_input_tokens == 0  # caches are per model


def test_openai_cached_tokens_for_a_repeated_prefix(server):
    server.add_model("m", "ok")
    client = gpt(server)
    history = [{"role": "system", "content": "s" * 400}, {"role": "user", "content": "u" * 400}]
    first = client.chat.completions.create(model="m", messages=history).usage
    assert (first.prompt_tokens, first.prompt_tokens_details.cached_tokens) == (200, 0)
    grown = [*history, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}]
    second = client.chat.completions.create(model="m", messages=grown).usage
    assert second.prompt_tokens == estimate_tokens(806)
    assert second.prompt_tokens_details.cached_tokens == 200
    assert second.total_tokens == second.prompt_tokens + second.completion_tokens


# -- errors ----------------------------------------------------------------------------------


def test_requests_need_the_key(server):
    server.add_model("m", "hi")
    body = {"model": "m", "max_tokens": 10, "messages": USER}
    status, _, raw = post(server, "/v1/messages", body)
    assert status == 401
    assert json.loads(raw)["error"]["type"] == "authentication_error"
    status, _, raw = post(server, "/v1/messages", body, {"x-api-key": server.api_key})
    assert status == 200
    with pytest.raises(anthropic.AuthenticationError) as info:
        claude(server, api_key="wrong-key-123").messages.create(**body)
    assert "wrong-key-123" not in str(info.value)
    with pytest.raises(openai.AuthenticationError) as oinfo:
        gpt(server, api_key="wrong-key-456").chat.completions.create(model="m", messages=USER)
    assert oinfo.value.body["code"] == "invalid_api_key"
    assert "wrong-key-456" not in str(oinfo.value)


def test_recorded_requests_carry_no_credentials(server):
    server.add_model("m", "hi")
    claude(server).messages.create(model="m", max_tokens=10, messages=USER)
    gpt(server).chat.completions.create(model="m", messages=USER)
    post(
        server,
        "/v1/messages",
        {"model": "m", "max_tokens": 10, "messages": USER},
        {"x-api-key": server.api_key},
    )
    assert [(r.api, r.model, r.status) for r in server.requests] == [
        ("anthropic", "m", 200),
        ("openai", "m", 200),
        ("anthropic", "m", 200),
    ]
    for r in server.requests:
        assert "authorization" not in r.headers and "x-api-key" not in r.headers
        assert server.api_key not in json.dumps(r.headers)
    assert server.requests[0].headers["x-stainless-retry-count"] == "0"
    assert server.requests[1].body["messages"] == USER


def test_unknown_model_names_the_known_ones(server):
    server.add_model("alpha", "a")
    server.add_model("beta", "b")
    with pytest.raises(anthropic.NotFoundError) as info:
        claude(server).messages.create(model="gamma", max_tokens=10, messages=USER)
    assert info.value.body["error"]["type"] == "not_found_error"
    assert "gamma" in str(info.value) and "alpha, beta" in str(info.value)
    with pytest.raises(openai.NotFoundError) as oinfo:
        gpt(server).chat.completions.create(model="gamma", messages=USER)
    assert "alpha, beta" in str(oinfo.value)


def test_exhausted_script_fails_clearly(server):
    model = ScriptedModel(["only"])
    server.add_model("m", model)
    client = claude(server)
    client.messages.create(model="m", max_tokens=10, messages=USER)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="m", max_tokens=10, messages=USER)
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "scripted model 'm' has no more replies (it was called 2 times)" in str(info.value)
    assert len(model.calls) == 2
    model.enqueue("more")
    assert client.messages.create(model="m", max_tokens=10, messages=USER).content[0].text == "more"


def test_an_exception_in_a_reply_is_a_500_that_is_not_retried(server):
    def broken(messages):
        raise KeyError("no such fact")

    server.add_model("m", broken)
    with pytest.raises(anthropic.InternalServerError) as info:
        claude(server, max_retries=2).messages.create(model="m", max_tokens=10, messages=USER)
    assert "KeyError" in str(info.value) and "no such fact" in str(info.value)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (529, "overloaded_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (400, "invalid_request_error"),
        (401, "authentication_error"),
    ],
)
def test_injected_failures_use_the_provider_error_shape(server, status, kind):
    server.add_model("m", "fine")
    server.fail(status, retry_after=2.5)
    body = {"model": "m", "max_tokens": 10, "messages": USER}
    got, headers, raw = post(server, "/v1/messages", body, {"x-api-key": server.api_key})
    assert got == status
    assert json.loads(raw)["type"] == "error" and json.loads(raw)["error"]["type"] == kind
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("3", "2500")
    assert post(server, "/v1/messages", body, {"x-api-key": server.api_key})[0] == 200


def test_injected_failures_are_retried_by_the_sdks(server):
    server.add_model("m", "fine")
    server.add_model("other", "other")
    server.fail(529, times=2, model="m", retry_after=0.01)
    client = claude(server, max_retries=2)
    assert (
        client.messages.create(model="other", max_tokens=10, messages=USER).content[0].text
        == "other"
    )
    raw = client.messages.with_raw_response.create(model="m", max_tokens=10, messages=USER)
    assert raw.http_request.headers["x-stainless-retry-count"] == "2"
    assert [r.status for r in server.requests] == [200, 529, 529, 200]
    assert [r.headers["x-stainless-retry-count"] for r in server.requests[1:]] == ["0", "1", "2"]
    server.fail(429, times=1, retry_after=0.01)
    out = gpt(server).chat.completions.with_raw_response.create(model="m", messages=USER)
    assert out.http_request.headers["x-stainless-retry-count"] == "1"
    assert out.parse().choices[0].message.content == "fine"


# -- scale -----------------------------------------------------------------------------------


def test_concurrent_requests_overlap(server):
    server.add_model("slow", ScriptedModel([f"r{i}" for i in range(32)], latency=0.2))

    async def main():
        client = anthropic.AsyncAnthropic(
            base_url=server.anthropic_base_url, api_key=server.api_key
        )
        async with client:
            calls = [
                client.messages.create(model="slow", max_tokens=10, messages=USER)
                for _ in range(32)
            ]
            return await asyncio.gather(*calls)

    start = time.perf_counter()
    replies = asyncio.run(main())
    elapsed = time.perf_counter() - start
    assert sorted(r.content[0].text for r in replies) == sorted(f"r{i}" for i in range(32))
    assert elapsed < 2.0, f"32 calls of 0.2 s took {elapsed:.2f} s; they did not overlap"


def test_a_thousand_requests_are_all_served_and_logged(server):
    # How fast is a benchmark's question (benchmarks/overhead.py), not a test's.
    server.add_model("m", "ok")
    client = claude(server)
    for _ in range(1000):
        assert client.messages.create(model="m", max_tokens=10, messages=USER).content[0].text
    assert len(server.requests) == 1000


# -- lifecycle and the pytest fixture --------------------------------------------------------


def test_lifecycle():
    server = FakeModelServer({"m": "hi"}, api_key="k")
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url
    server.start()
    assert server.url.startswith("http://127.0.0.1:")
    assert server.openai_base_url == server.url + "/v1"
    assert server.env() == {
        "ANTHROPIC_BASE_URL": server.url,
        "ANTHROPIC_API_KEY": "k",
        "OPENAI_BASE_URL": server.url + "/v1",
        "OPENAI_API_KEY": "k",
    }
    client = claude(server)
    client.messages.create(model="m", max_tokens=10, messages=USER)  # leaves a kept-alive socket
    start = time.perf_counter()
    server.stop()
    server.stop()
    assert time.perf_counter() - start < 2
    with pytest.raises(anthropic.APIConnectionError):
        client.with_options(max_retries=0).messages.create(model="m", max_tokens=10, messages=USER)


def test_models_are_checked_when_added():
    with pytest.raises(TypeError):
        FakeModelServer({"m": 42})
    with pytest.raises(TypeError):
        ScriptedModel([b"bytes"])
    with pytest.raises(ValueError):
        FakeModelServer().fail(200)


def test_fixture_points_both_sdks_at_the_server(fake_model_server):
    fake_model_server.add_model("claude-test", "from anthropic")
    fake_model_server.add_model("gpt-test", "from openai")
    assert os.environ["ANTHROPIC_BASE_URL"] == fake_model_server.url
    assert os.listdir(os.environ["ANTHROPIC_CONFIG_DIR"]) == []
    msg = anthropic.Anthropic().messages.create(model="claude-test", max_tokens=10, messages=USER)
    assert msg.content[0].text == "from anthropic"
    out = openai.OpenAI().chat.completions.create(model="gpt-test", messages=USER)
    assert out.choices[0].message.content == "from openai"
