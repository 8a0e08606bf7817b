"""``rlm-kernel bench``: bad input in one line, and the whole command against the fake server."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
from bench_models import oracle

from rlm_kernel import cli, record
from rlm_kernel.bench import tasks
from rlm_kernel.llm import pricing

needs_bench_extra = pytest.mark.skipif(
    importlib.util.find_spec("bm25s") is None or importlib.util.find_spec("matplotlib") is None,
    reason="retrieval and the plots need the bench extra (pip install 'rlm-kernel[bench]')",
)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuch"], "argument TASK: invalid choice: 'nosuch'"),
        (["sniah", "--methods", "rlm,magic"], "unknown method(s) magic; methods are: rlm,"),
        (["sniah", "--sizes", "10"], "size '10' is too small: sizes start at 1K tokens"),
        (["sniah", "--sizes", "lots"], "size 'lots' is not a number of tokens"),
        (["sniah", "--n", "0"], "argument --n: must be at least 1, not 0"),
        (["sniah", "--model", "gpt"], "model 'gpt' is not of the form PROVIDER:MODEL"),
        (["sniah", "--max-steps", "0"], "argument --max-steps: must be a positive number"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, args, message):
    status = cli.main(["bench", *args, "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


@pytest.mark.skipif(
    importlib.util.find_spec("rlm_kernel.bench.overhead") is not None,
    reason="the overhead suite is installed",
)
def test_overhead_without_its_module_is_one_line(capsys):
    assert cli.main(["bench", "overhead", "--compare", "rlms"]) == 2
    err = capsys.readouterr().err
    assert err == "rlm-kernel bench: error: the overhead suite is not part of this installation\n"


def test_bench_is_listed_in_the_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "bench" in capsys.readouterr().out


@needs_bench_extra
@pytest.mark.slow
def test_bench_writes_everything_and_a_second_invocation_costs_nothing(
    fake_model_server, tmp_path, capsys
):
    out = tmp_path / "out"
    (inst,) = tasks.generate("sniah", n=1, seed=0, size_tokens=8_000)
    fake_model_server.add_model("solver", oracle([inst]))
    pricing.set_price("openai:solver", 1.0, 4.0)
    argv = [
        "bench", "sniah", "--model", "openai:solver", "--n", "1", "--sizes", "8K",
        "--methods", "rlm,direct,summary,retrieval", "--window", "3000", "--max-tokens", "500",
        "--sub-max-tokens", "300", "--max-steps", "4", "--out", str(out), "--quiet", "--json",
    ]  # fmt: skip
    try:
        assert cli.main(argv) == 0
        first = json.loads(capsys.readouterr().out)
        asked = len(fake_model_server.requests)
        for name in ("results.md", "results.json", "score_vs_size.png", "cost_distribution.png"):
            assert (out / name).stat().st_size > 0
        assert [(r["method"], r["score"]) for r in first["rows"]] == [
            ("rlm", 1.0), ("direct", 1.0), ("summary", 1.0), ("retrieval", 1.0)
        ]  # fmt: skip
        assert all(r["cost_mean"] > 0 and r["cached_calls"] == 0 for r in first["rows"])
        for result in first["results"]:
            assert record.read(out / result["notebook"]).run.status == "answered"

        # Resumed: every run is finished, nothing runs again.
        assert cli.main(argv) == 0
        capsys.readouterr()
        assert len(fake_model_server.requests) == asked

        # Run again from scratch in the same folder: every model call is a cache hit.
        shutil.rmtree(out / "results")
        assert cli.main(argv) == 0
        again = json.loads(capsys.readouterr().out)
        # Every call is answered from the cache, the RLM's later steps too: the step feedback's
        # running totals (seconds, dollars) are not part of the cache key.
        assert len(fake_model_server.requests) == asked
        assert [r["score"] for r in again["rows"]] == [1.0] * 4
        for row in again["rows"]:
            assert row["cost_mean"] == 0, row["method"]
            assert row["cached_calls"] == row["calls"] > 0, row["method"]
        direct = record.read(out / "runs" / "direct" / f"{inst.id}.ipynb")
        assert direct.steps[0].extra["cached"] is True
    finally:
        pricing.clear_prices()
