"""Every way a model call can fail, injected for real, ends as one clear ModelError line.

The real SDK providers (``resolve("anthropic:...")`` / ``resolve("openai:...")``) talk to the
fake model server, which breaks its replies on demand: HTTP errors, resets, hangs, bodies and
streams that are not JSON, streams cut mid-way, empty streams, streams without a stop reason.
"""

from __future__ import annotations

import asyncio

import pytest

from rlm_kernel.errors import ModelError
from rlm_kernel.llm import pricing, resolve
from rlm_kernel.llm.anthropic import AnthropicLLM
from rlm_kernel.llm.openai import OpenAILLM
from rlm_kernel.testing import estimate_tokens

REPLY = "The answer is 42, as the context says in its third paragraph."
USER = [{"role": "user", "content": "What is the answer?"}]
PROVIDERS = {"anthropic": AnthropicLLM, "openai": OpenAILLM}
CASES = [
    pytest.param(provider, stream, id=f"{provider}-{'stream' if stream else 'plain'}")
    for provider in PROVIDERS
    for stream in (True, False)
]


def call(llm, messages=USER, max_tokens=200):
    async def go():
        try:
            return await llm.complete(messages, max_tokens=max_tokens)
        finally:
            await llm.aclose()

    return asyncio.run(go())


def failure(llm, **kwargs) -> ModelError:
    with pytest.raises(ModelError) as info:
        call(llm, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{llm.name}: ")
    return info.value


@pytest.fixture
def server(fake_model_server):
    fake_model_server.add_model("m", REPLY)
    return fake_model_server


@pytest.mark.parametrize(("provider", "stream"), CASES)
@pytest.mark.parametrize("status", [429, 529, 500])
def test_transient_http_errors_are_retried_then_succeed(server, provider, stream, status):
    server.fail(status, times=2, retry_after=0.01)
    out = call(PROVIDERS[provider]("m", stream=stream, max_retries=2))
    assert out.text == REPLY
    assert out.retries == 2
    assert [r.status for r in server.requests] == [status, status, 200]


@pytest.mark.parametrize(("provider", "stream"), CASES)
def test_rate_limit_that_outlasts_the_retries_names_the_status(server, provider, stream):
    server.fail(429, times=3, retry_after=0.01, message="slow down")
    error = failure(PROVIDERS[provider]("m", stream=stream, max_retries=2))
    assert "HTTP 429" in str(error) and "slow down" in str(error)
    assert "(after 2 retries)" in str(error)
    assert error.retries == 2


@pytest.mark.parametrize(("provider", "stream"), CASES)
def test_reset_connection_is_lost_not_unreachable(server, provider, stream):
    server.fault("reset", times=3)
    error = failure(PROVIDERS[provider]("m", stream=stream, max_retries=1))
    assert "connection to http://127.0.0.1:" in str(error)
    assert "was lost before the reply was complete" in str(error)
    assert "could not connect" not in str(error)
    assert len(server.requests) == 2  # the SDK retried once


@pytest.mark.parametrize(("provider", "stream"), CASES)
def test_reset_once_is_retried(server, provider, stream):
    server.fault("reset")
    out = call(PROVIDERS[provider]("m", stream=stream, max_retries=1))
    assert out.text == REPLY and out.retries == 1


@pytest.mark.parametrize(("provider", "stream"), CASES)
def test_server_that_never_answers_times_out(server, provider, stream):
    server.fault("hang", times=2, seconds=30)
    error = failure(PROVIDERS[provider]("m", stream=stream, max_retries=1, timeout=0.3))
    assert "the request timed out (after 1 retry)" in str(error)


@pytest.mark.parametrize(("provider", "stream"), CASES)
def test_reply_that_is_not_json(server, provider, stream):
    server.fault("malformed", times=3)
    error = failure(
        resolve(f"{provider}:m") if not stream else PROVIDERS[provider]("m", stream=True)
    )
    assert "the server's reply is not valid (JSONDecodeError" in str(error)
    assert isinstance(error.__cause__, ValueError)


@pytest.mark.parametrize(("provider", "stream"), CASES)
def test_reply_cut_mid_way_is_a_lost_connection(server, provider, stream):
    server.fault("cut", times=3)
    error = failure(PROVIDERS[provider]("m", stream=stream, max_retries=0))
    assert "was lost before the reply was complete" in str(error)
    assert "could not connect" not in str(error)


@pytest.mark.parametrize(("provider", "stream"), CASES)
def test_empty_reply_says_the_prompt_may_be_too_long(server, provider, stream):
    server.fault("empty")
    error = failure(PROVIDERS[provider]("m", stream=stream))
    expected = "stream ended without any event" if stream else "reply has no content"
    assert expected in str(error)
    assert "larger than the server's context window" in str(error)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_without_a_stop_reason_is_an_error(server, provider):
    server.fault("no_finish", stream=True)
    error = failure(PROVIDERS[provider]("m", stream=True))
    assert "ended without a stop reason" in str(error)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_faults_only_hit_the_requests_they_match(server, provider):
    server.fault("empty", stream=True)  # a plain request passes untouched
    assert call(PROVIDERS[provider]("m", stream=False)).text == REPLY
    failure(PROVIDERS[provider]("m", stream=True))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unreachable_server_could_not_connect(monkeypatch, provider):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    error = failure(PROVIDERS[provider]("m", max_retries=0))
    assert f"could not connect to http://127.0.0.1:{port}" in str(error)


# -- usage a server does not report ----------------------------------------------------------


def test_server_without_stream_usage_is_asked_without_streaming_after(server):
    server.fault("no_usage", times=10, stream=True)
    llm = OpenAILLM("m", stream=None)  # auto: replies this long stream

    async def go():
        try:
            first = await llm.complete(USER, max_tokens=20_000)
            second = await llm.complete(USER, max_tokens=20_000)
            return first, second
        finally:
            await llm.aclose()

    first, second = asyncio.run(go())
    assert [r.stream for r in server.requests] == [True, False]
    assert first.text == second.text == REPLY
    assert second.usage.output_tokens == estimate_tokens(len(REPLY))


def test_explicit_streaming_keeps_streaming_without_usage(server):
    server.fault("no_usage", times=10, stream=True)
    llm = OpenAILLM("m", stream=True)

    async def go():
        try:
            return [await llm.complete(USER, max_tokens=100) for _ in range(2)]
        finally:
            await llm.aclose()

    asyncio.run(go())
    assert [r.stream for r in server.requests] == [True, True]


# -- prices off the official endpoints -------------------------------------------------------


@pytest.mark.parametrize(("provider", "stream"), CASES)
def test_official_model_names_on_another_server_have_no_price(server, provider, stream):
    model = "claude-haiku-5-5" if provider == "anthropic" else "gpt-4o-mini"
    server.add_model(model, REPLY)
    assert pricing.price(provider, model) is not None  # priced on the official endpoint
    llm = PROVIDERS[provider](model, stream=stream)
    assert llm.official is False
    assert call(llm).cost_usd is None


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_price_given_applies_on_any_server(server, provider, monkeypatch):
    monkeypatch.setattr(pricing, "_given", {})
    pricing.set_price(f"{provider}:m", 1.0, 2.0)
    out = call(resolve(f"{provider}:m"))
    expected = (out.usage.input_tokens + out.usage.cache_read_input_tokens) * 1.0
    expected += out.usage.cache_creation_input_tokens * 1.0 + out.usage.output_tokens * 2.0
    assert out.cost_usd == pytest.approx(expected / 1_000_000)
    assert out.cost_usd > 0
