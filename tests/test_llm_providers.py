"""The anthropic and openai providers, through the real SDKs against the fake model server."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from rlm_kernel.errors import MissingAPIKeyError, ModelError, UnknownProviderError, UsageError
from rlm_kernel.llm import STREAM_ABOVE_TOKENS, resolve
from rlm_kernel.llm.anthropic import AnthropicLLM
from rlm_kernel.llm.openai import OpenAILLM
from rlm_kernel.testing import ScriptedModel, estimate_tokens

PROVIDERS = {"anthropic": AnthropicLLM, "openai": OpenAILLM}
CASES = [
    pytest.param(provider, stream, id=f"{provider}-{'stream' if stream else 'plain'}")
    for provider in PROVIDERS
    for stream in (True, False)
]
SYSTEM = {"role": "system", "content": "You are terse. " * 100}


def run(coro):
    return asyncio.run(coro)


async def ask(llm, messages, max_tokens=1000):
    try:
        return await llm.complete(messages, max_tokens=max_tokens)
    finally:
        await llm.aclose()


async def conversation(llm, turns):
    """Complete a growing conversation, one call per user turn."""
    messages, outs = [SYSTEM], []
    try:
        for user in turns:
            messages.append({"role": "user", "content": user})
            out = await llm.complete(messages, max_tokens=1000)
            messages.append({"role": "assistant", "content": out.text})
            outs.append(out)
    finally:
        await llm.aclose()
    return outs


@pytest.mark.parametrize(("provider", "stream"), CASES)
def test_text_usage_and_cost(fake_model_server, provider, stream):
    reply = "The answer is 42, as the context says."
    fake_model_server.add_model("model-x", ScriptedModel([reply]))
    llm = PROVIDERS[provider]("model-x", stream=stream)
    assert llm.name == f"{provider}:model-x"
    out = run(ask(llm, [SYSTEM, {"role": "user", "content": "What is the answer?"}]))
    assert out.text == reply
    assert out.model == llm.name
    assert out.usage.calls == 1
    assert out.usage.output_tokens == estimate_tokens(len(reply))
    prompt = len(SYSTEM["content"]) + len("What is the answer?")
    assert out.usage.total_tokens - out.usage.output_tokens == estimate_tokens(prompt)
    assert out.stop_reason in ("end_turn", "stop")
    assert out.retries == 0
    assert out.cost_usd is None  # an unpriced model costs nothing we could know
    assert 0 < out.latency_s < 5
    (request,) = fake_model_server.requests
    assert request.stream is stream
    assert request.body["messages"][-1]["role"] == "user"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_only_the_official_endpoint_is_billed_at_published_prices(monkeypatch, provider):
    monkeypatch.setenv(f"{provider.upper()}_API_KEY", "k")
    assert PROVIDERS[provider]("m").official is True  # the SDK's default endpoint
    monkeypatch.setenv(f"{provider.upper()}_BASE_URL", "http://127.0.0.1:9/v1")
    assert PROVIDERS[provider]("m").official is False


@pytest.mark.parametrize(("provider", "stream"), CASES)
def test_second_turn_reads_the_cache(fake_model_server, provider, stream):
    fake_model_server.add_model("model-x", ScriptedModel(["first answer", "second answer"]))
    llm = PROVIDERS[provider]("model-x", stream=stream)
    first, second = run(conversation(llm, ["question one " * 20, "question two"]))
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens >= estimate_tokens(len(SYSTEM["content"]))
    assert second.text == "second answer"
    if provider == "anthropic":
        # The first turn was written to the cache whole; the second reads all of it.
        assert first.usage.cache_creation_input_tokens > 0
        assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
        body = fake_model_server.requests[-1].body
        assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
        assert [isinstance(m["content"], list) for m in body["messages"]] == [False, False, True]
        assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}


def test_anthropic_without_cache_sends_plain_strings(fake_model_server):
    fake_model_server.add_model("model-x", "ok")
    run(ask(AnthropicLLM("model-x", cache=False), [SYSTEM, {"role": "user", "content": "hi"}]))
    body = fake_model_server.requests[0].body
    assert body["system"] == SYSTEM["content"]
    assert body["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("provider", "stream"), CASES)
def test_retries_are_counted(fake_model_server, provider, stream):
    fake_model_server.add_model("model-x", "after the storm")
    status = 529 if provider == "anthropic" else 429
    fake_model_server.fail(status, times=2, retry_after=0.01)
    llm = PROVIDERS[provider]("model-x", stream=stream, max_retries=3)
    out = run(ask(llm, [{"role": "user", "content": "hi"}]))
    assert out.text == "after the storm"
    assert out.retries == 2
    sent = fake_model_server.requests
    assert [r.status for r in sent] == [status, status, 200]
    assert [r.headers["x-stainless-retry-count"] for r in sent] == ["0", "1", "2"]


@pytest.mark.parametrize(("provider", "stream"), CASES)
def test_model_error_after_retries_are_exhausted(fake_model_server, provider, stream):
    fake_model_server.add_model("model-x", "never")
    fake_model_server.fail(529 if provider == "anthropic" else 500, times=5, retry_after=0.01)
    llm = PROVIDERS[provider]("model-x", stream=stream, max_retries=2)
    with pytest.raises(ModelError) as info:
        run(ask(llm, [{"role": "user", "content": "hi"}]))
    err = info.value
    assert err.retries == 2 and err.model == llm.name
    message = str(err)
    assert message.startswith(f"{llm.name}: HTTP {529 if provider == 'anthropic' else 500}")
    assert "after 2 retries" in message
    if provider == "anthropic":
        assert "overloaded_error" in message
    assert len(fake_model_server.requests) == 3


@pytest.mark.parametrize(("provider", "stream"), CASES)
def test_wrong_key_is_a_model_error_without_the_key(
    fake_model_server, monkeypatch, provider, stream
):
    fake_model_server.add_model("model-x", "never")
    secret = "sk-wrong-0123456789abcdef"
    monkeypatch.setenv(f"{provider.upper()}_API_KEY", secret)
    llm = PROVIDERS[provider]("model-x", stream=stream)
    with pytest.raises(ModelError) as info:
        run(ask(llm, [{"role": "user", "content": "hi"}]))
    assert "HTTP 401" in str(info.value)
    assert info.value.retries == 0
    assert secret not in str(info.value)
    assert all(secret not in str(r.headers) for r in fake_model_server.requests)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unknown_model_is_a_model_error(fake_model_server, provider):
    fake_model_server.add_model("real-model", "x")
    with pytest.raises(ModelError, match=r"HTTP 404.*no-such-model.*real-model"):
        run(ask(PROVIDERS[provider]("no-such-model"), [{"role": "user", "content": "hi"}]))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unreachable_server_is_a_model_error(fake_model_server, monkeypatch, provider):
    llm = PROVIDERS[provider]("model-x", max_retries=0)
    fake_model_server.stop()
    with pytest.raises(ModelError, match=r"could not connect to http://127\.0\.0\.1:"):
        run(ask(llm, [{"role": "user", "content": "hi"}]))


def test_missing_anthropic_key():
    # conftest leaves no key and an empty SDK config directory
    with pytest.raises(MissingAPIKeyError) as info:
        AnthropicLLM("claude-sonnet-5-5")
    assert info.value.env_var == "ANTHROPIC_API_KEY"
    assert "ANTHROPIC_API_KEY" in str(info.value)


def test_missing_anthropic_key_without_config_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("ANTHROPIC_CONFIG_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(MissingAPIKeyError, match="set the ANTHROPIC_API_KEY environment variable"):
        AnthropicLLM("claude-sonnet-5-5")


def test_anthropic_auth_token_counts_as_a_credential(fake_model_server, monkeypatch):
    fake_model_server.add_model("model-x", "token ok")
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", fake_model_server.api_key)
    assert run(ask(AnthropicLLM("model-x"), [{"role": "user", "content": "hi"}])).text == "token ok"


def test_missing_openai_key():
    with pytest.raises(MissingAPIKeyError) as info:
        OpenAILLM("gpt-5-mini")
    assert info.value.env_var == "OPENAI_API_KEY"
    assert "any non-empty value works for local servers" in str(info.value)


def test_openai_extra_not_installed():
    code = (
        "import sys; sys.modules['openai'] = None\n"
        "from rlm_kernel.errors import UsageError\n"
        "from rlm_kernel.llm import resolve\n"
        "try:\n"
        "    resolve('openai:gpt-5-mini')\n"
        "except UsageError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'rlm-kernel[openai]'" in out.stdout


@pytest.mark.parametrize("provider", PROVIDERS)
def test_resolve_returns_working_providers(fake_model_server, provider):
    fake_model_server.add_model("some-model", lambda messages: messages[-1]["content"].upper())
    llm = resolve(f"{provider}:some-model")
    assert isinstance(llm, PROVIDERS[provider])
    assert llm.name == f"{provider}:some-model"
    assert run(ask(llm, [{"role": "user", "content": "echo"}])).text == "ECHO"


def test_unknown_provider():
    with pytest.raises(UnknownProviderError, match="no model provider named 'nope'"):
        resolve("nope:model")


def test_anthropic_non_streaming_falls_back_to_streaming_for_long_replies(fake_model_server):
    fake_model_server.add_model("model-x", ScriptedModel(["short", "long"]))
    llm = AnthropicLLM("model-x", stream=False)

    async def both():
        try:
            await llm.complete([{"role": "user", "content": "a"}], max_tokens=4000)
            await llm.complete([{"role": "user", "content": "b"}], max_tokens=64_000)
        finally:
            await llm.aclose()

    run(both())
    assert [r.stream for r in fake_model_server.requests] == [False, True]


def test_openai_compatible_servers_get_max_tokens(fake_model_server):
    fake_model_server.add_model("local-model", "ok")
    run(ask(OpenAILLM("local-model", stream=False), [{"role": "user", "content": "hi"}], 123))
    body = fake_model_server.requests[0].body
    assert body["max_tokens"] == 123 and "max_completion_tokens" not in body
    run(ask(OpenAILLM("local-model", stream=True), [{"role": "user", "content": "hi"}], 77))
    body = fake_model_server.requests[1].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_by_default_only_long_replies_stream(fake_model_server, provider):
    fake_model_server.add_model("model-x", "ok")
    hi = [{"role": "user", "content": "hi"}]
    run(ask(PROVIDERS[provider]("model-x"), hi, STREAM_ABOVE_TOKENS))
    run(ask(PROVIDERS[provider]("model-x"), hi, STREAM_ABOVE_TOKENS + 1))
    assert [r.stream for r in fake_model_server.requests] == [False, True]


def test_anthropic_rejects_a_system_message_mid_conversation(fake_model_server):
    llm = AnthropicLLM("model-x")
    messages = [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]
    with pytest.raises(UsageError, match="only the first message may be a system message"):
        run(ask(llm, messages))
