"""Model prices: the data file, exact and dated ids, unknown models, long-context bands."""

from __future__ import annotations

import json
from importlib import resources

import pytest

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
