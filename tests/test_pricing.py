"""Model prices: the data file, exact and dated ids, unknown models, long-context bands."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from rlm_kernel.errors import UsageError
from rlm_kernel.llm import pricing
from rlm_kernel.types import Usage

M = 1_000_000


def test_price_file_has_provenance_and_complete_entries():
    data = json.loads(resources.files("rlm_kernel.llm").joinpath("prices.json").read_text())
    assert data["as_of"] == pricing.prices_as_of() == "2026-11"
    assert data["source"].startswith("https://")
    for provider, models in data["providers"].items():
        for model, entry in models.items():
            for key in ("input", "output", "cache_read"):
                assert entry[key] >= 0, (provider, model, key)
            if provider == "anthropic":
                # The 5-minute cache write is 1.25 x input for every Claude model.
                assert entry["cache_write"] == pytest.approx(entry["input"] * 1.25)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("claude-opus-5-5", (4, 20, 5, 0.20)),
        ("claude-opus-4-6", (5, 25, 6.25, 0.50)),
        ("claude-opus-4-1", (15, 75, 18.75, 1.50)),
        ("claude-sonnet-5-5", (2, 10, 2.50, 0.10)),
        ("claude-sonnet-5", (2, 10, 2.50, 0.20)),
        ("claude-sonnet-4", (3, 15, 3.75, 0.30)),
        ("claude-haiku-4-5", (1, 5, 1.25, 0.10)),
        ("claude-mythos-5-1", (10, 50, 12.50, 0.25)),
        ("claude-fable-5", (10, 50, 12.50, 1.00)),
    ],
)
def test_anthropic_prices(model, expected):
    p = pricing.price("anthropic", model)
    assert (p["input"], p["output"], p["cache_write"], p["cache_read"]) == expected


def test_cost_sums_all_four_kinds_of_tokens():
    usage = Usage(
        calls=1,
        input_tokens=1_000,
        output_tokens=2_000,
        cache_read_input_tokens=10_000,
        cache_creation_input_tokens=4_000,
    )
    expected = (1_000 * 2 + 2_000 * 10 + 4_000 * 2.5 + 10_000 * 0.10) / M
    assert pricing.cost("anthropic", "claude-sonnet-5-5", usage) == pytest.approx(expected)


def test_openai_has_no_cache_write_price_and_bills_cached_reads():
    usage = Usage(calls=1, input_tokens=M, output_tokens=M, cache_read_input_tokens=M)
    assert pricing.cost("openai", "gpt-5-mini", usage) == pytest.approx(0.25 + 2 + 0.025)
    assert "cache_write" not in pricing.price("openai", "gpt-4o")


@pytest.mark.parametrize(
    ("provider", "model", "base"),
    [
        ("anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("anthropic", "claude-opus-4-20250514", "claude-opus-4"),
        ("openai", "gpt-4o-2024-08-06", "gpt-4o"),
    ],
)
def test_dated_ids_cost_like_their_alias(provider, model, base):
    usage = Usage(calls=1, input_tokens=123_456, output_tokens=7_890)
    assert pricing.price(provider, model) == pricing.price(provider, base)
    assert pricing.cost(provider, model, usage) == pricing.cost(provider, base, usage)


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("anthropic", "claude-unknown-9"),
        ("anthropic", "claude-sonnet-4-5-latest"),  # not a date suffix: no guess
        ("anthropic", "claude-sonnet-4-5-2025"),
        ("openai", "llama-3.1-8b-instruct"),
        ("vllm", "claude-sonnet-5-5"),
        ("function", "whatever"),
    ],
)
def test_unknown_models_have_no_price(provider, model):
    assert pricing.price(provider, model) is None
    assert pricing.cost(provider, model, Usage(calls=1, input_tokens=10)) is None


def test_haiku_5_5_long_context_band():
    short = Usage(calls=1, input_tokens=60_000, cache_read_input_tokens=40_000, output_tokens=1_000)
    assert pricing.cost("anthropic", "claude-haiku-5-5", short) == pytest.approx(
        (60_000 * 0.10 + 40_000 * 0.01 + 1_000 * 0.50) / M
    )
    # One token more, counting cache reads and writes, bills the whole request at the long rate.
    long = Usage(
        calls=1,
        input_tokens=60_000,
        cache_read_input_tokens=40_000,
        cache_creation_input_tokens=1,
        output_tokens=1_000,
    )
    assert pricing.cost("anthropic", "claude-haiku-5-5", long) == pytest.approx(
        (60_000 * 0.50 + 40_000 * 0.05 + 1 * 0.625 + 1_000 * 2.50) / M
    )
    # Summed usage of many short calls stays in the short band.
    many = Usage(calls=10, input_tokens=900_000, output_tokens=10_000)
    assert pricing.cost("anthropic", "claude-haiku-5-5", many) == pytest.approx(
        (900_000 * 0.10 + 10_000 * 0.50) / M
    )


def test_price_returns_a_copy():
    pricing.price("anthropic", "claude-haiku-5-5")["long_context"]["input"] = 999
    assert pricing.price("anthropic", "claude-haiku-5-5")["long_context"]["input"] == 0.5


# -- prices the user gives ---------------------------------------------------------------------


@pytest.fixture
def given(monkeypatch):
    """No prices given in this process before or after the test."""
    monkeypatch.setattr(pricing, "_given", {})
    return pricing


def write_prices(tmp_path, monkeypatch, data) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = tmp_path / "rlm-kernel" / "prices.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    assert pricing.user_prices_path() == path


def test_off_the_official_endpoint_only_given_prices_apply(given):
    usage = Usage(calls=1, input_tokens=M, output_tokens=M)
    assert pricing.cost("openai", "gpt-5-mini", usage, official=False) is None
    assert pricing.price("openai", "gpt-5-mini", official=False) is None
    given.set_price("openai:gpt-5-mini", 0.5, 1.5)
    assert pricing.cost("openai", "gpt-5-mini", usage, official=False) == pytest.approx(2.0)
    # A given price wins over the official table on the official endpoint too.
    assert pricing.cost("openai", "gpt-5-mini", usage) == pytest.approx(2.0)
    given.clear_prices()
    assert pricing.cost("openai", "gpt-5-mini", usage) == pytest.approx(0.25 + 2)


def test_a_bare_model_id_prices_it_under_any_provider_and_dated_ids(given):
    given.set_price("llama-3.1-8b", 1, 2, cache_read_per_mtok=0.1, cache_write_per_mtok=3)
    usage = Usage(
        calls=1, input_tokens=M, output_tokens=M, cache_read_input_tokens=M,
        cache_creation_input_tokens=M,
    )  # fmt: skip
    assert pricing.cost("openai", "llama-3.1-8b", usage, official=False) == pytest.approx(6.1)
    assert pricing.cost("vllm", "llama-3.1-8b-20250101", usage, official=False) == pytest.approx(
        6.1
    )
    # Without cache prices, cache tokens are billed as input.
    given.set_price("openai:plain", 1, 2)
    assert pricing.cost("openai", "plain", usage, official=False) == pytest.approx(5)


@pytest.mark.parametrize("bad", [-1, float("nan"), "1", True])
def test_set_price_refuses_what_is_not_a_price(given, bad):
    with pytest.raises(UsageError, match="must be a number >= 0"):
        given.set_price("openai:m", bad, 1)
    with pytest.raises(UsageError, match="needs a model name"):
        given.set_price("openai:", 1, 1)


def test_user_prices_file_in_the_config_dir(given, tmp_path, monkeypatch):
    write_prices(tmp_path, monkeypatch, {"openai:local": {"input": 0, "output": 0.5}})
    usage = Usage(calls=1, input_tokens=M, output_tokens=M)
    assert pricing.cost("openai", "local", usage, official=False) == pytest.approx(0.5)
    given.set_price("openai:local", 1, 1)  # set_price wins over the file
    assert pricing.cost("openai", "local", usage, official=False) == pytest.approx(2)


def test_user_prices_file_is_read_again_when_it_changes(given, tmp_path, monkeypatch):
    write_prices(tmp_path, monkeypatch, {"openai:local": {"input": 1, "output": 1}})
    usage = Usage(calls=1, input_tokens=M)
    assert pricing.cost("openai", "local", usage, official=False) == pytest.approx(1)
    write_prices(tmp_path, monkeypatch, {"openai:local": {"input": 3, "output": 1}, "x": {}})
    with pytest.raises(UsageError, match="needs 'input'"):
        pricing.cost("openai", "local", usage, official=False)
    write_prices(tmp_path, monkeypatch, {"openai:local": {"input": 3.0, "output": 1}})
    assert pricing.cost("openai", "local", usage, official=False) == pytest.approx(3)


def test_home_config_dir_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert pricing.user_prices_path() == tmp_path / ".config" / "rlm-kernel" / "prices.json"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold an object of model names"),
        ('{"openai:m": 3}', "is not an object of rates"),
        ('{"openai:m": {"input": 1, "output": 1, "cached": 1}}', "unknown price key"),
        ('{"openai:m": {"input": 1, "output": -2}}', "output of 'openai:m' must be a number"),
    ],
)
def test_bad_prices_file_is_a_usage_error_naming_the_file(
    given, tmp_path, monkeypatch, content, message
):
    write_prices(tmp_path, monkeypatch, content)
    with pytest.raises(UsageError, match=message) as info:
        pricing.user_prices()
    assert str(pricing.user_prices_path()) in str(info.value)
    assert "\n" not in str(info.value)
