"""Benchmarks end to end: scripted models through the real SDKs and the fake model server.

A scripted model that solves each task scores 1.0 with every method; one that answers wrongly
scores what the scorer says, checked by hand. Every run leaves a valid notebook.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
from bench_models import oracle

from rlm_kernel import record
from rlm_kernel.bench import tasks
from rlm_kernel.bench.runner import BenchConfig, bench, read_results
from rlm_kernel.types import Limits

SIZE = {"codeqa": 16_000}
LIMITS = Limits(max_steps=4, max_tokens=500, sub_max_tokens=300, cell_timeout=60, timeout=120)
needs_bm25 = pytest.mark.skipif(
    importlib.util.find_spec("bm25s") is None,
    reason="the retrieval method needs bm25s (pip install 'rlm-kernel[bench]')",
)


def config(task, out, methods, **kw):
    return BenchConfig(
        task=task,
        model="openai:solver",
        sub_model="openai:solver",
        methods=methods,
        sizes=[SIZE.get(task, 8_000)],
        n=1,
        seed=kw.pop("seed", 0),
        workers=2,
        out=out,
        limits=LIMITS,
        window=3_000,
        **kw,
    )


def instances_of(cfg):
    return tasks.generate(cfg.task, n=cfg.n, seed=cfg.seed, size_tokens=cfg.sizes[0])


def run(server, cfg, model):
    server.add_model("solver", model)
    return bench(cfg, on_result=None)


@pytest.mark.slow
@pytest.mark.parametrize("task", list(tasks.TASKS))
def test_a_solver_scores_one_with_the_rlm_and_direct(fake_model_server, tmp_path, task):
    cfg = config(task, tmp_path / "out", ["rlm", "direct"])
    made = run(fake_model_server, cfg, oracle(instances_of(cfg), solve_sniah=True))
    assert [(r.method, r.runs, r.score, r.errors) for r in made.rows] == [
        ("rlm", 1, 1.0, 0),
        ("direct", 1, 1.0, 0),
    ]
    for result in read_results(cfg.out):
        nb = record.read(cfg.out / result["notebook"])
        assert nb.run.status == "answered"
        assert nb.run.answer is not None and nb.run.question == result["question"]
    rlm_nb = record.read(cfg.out / "runs" / "rlm" / f"{instances_of(cfg)[0].id}.ipynb")
    assert len(rlm_nb.steps) == 2 and rlm_nb.code_cells[0].exec.status == "ok"
    direct_nb = record.read(cfg.out / "runs" / "direct" / f"{instances_of(cfg)[0].id}.ipynb")
    assert len(direct_nb.steps) == 1
    # the 3,000-token window cuts every context here, and the prompt says so
    prompts = [r.body["messages"][-1]["content"] for r in fake_model_server.requests]
    assert sum("cut to fit the model's window" in p for p in prompts) == 1


def wrong_answers(task):
    """A wrong answer per task, and the score the scorer gives it (hand-checked)."""
    if task == "oolong":  # instance 0 asks for a count: off by two
        return (lambda i: i.gold + 2), lambda i: 0.5625
    if task == "oolong-pairs":  # one right pair left out, one wrong pair added
        return (
            lambda i: [*i.gold[1:], ["10000", "10001"]],
            lambda i: (len(i.gold) - 1) / len(i.gold),
        )
    return (lambda i: "Atlantis 42"), lambda i: 0.0


@pytest.mark.parametrize("task", list(tasks.TASKS))
def test_a_wrong_model_scores_what_the_scorer_says(fake_model_server, tmp_path, task):
    # seed 3: the pairs instance has six pairs to find
    cfg = config(task, tmp_path / "out", ["direct"], seed=3 if task == "oolong-pairs" else 0)
    (inst,) = instances_of(cfg)
    answer, expected = wrong_answers(task)
    if task == "oolong-pairs":
        assert len(inst.gold) >= 2, "choose a seed whose instance has pairs to find"
    made = run(fake_model_server, cfg, oracle([inst], answer))
    assert math.isclose(made.rows[0].score, expected(inst))
    (result,) = read_results(cfg.out)
    assert result["status"] == "answered" and result["gold"] == inst.gold


@needs_bm25
def test_summary_and_retrieval_answer_from_chunks(fake_model_server, tmp_path):
    cfg = config("multihop", tmp_path / "out", ["summary", "retrieval"])
    (inst,) = instances_of(cfg)
    made = run(fake_model_server, cfg, oracle([inst]))
    assert [(r.method, r.score) for r in made.rows] == [("summary", 1.0), ("retrieval", 1.0)]
    summary = record.read(cfg.out / "runs" / "summary" / f"{inst.id}.ipynb")
    chunk_steps = [s for s in summary.steps if "Summary of part" in s.prose]
    assert len(chunk_steps) >= 2 and len(summary.steps) == len(chunk_steps) + 1
    retrieval = record.read(cfg.out / "runs" / "retrieval" / f"{inst.id}.ipynb")
    assert len(retrieval.steps) == 1
    retrieved = retrieval.run.extra["bench"]["retrieved"]
    assert retrieved == sorted(retrieved) and 1 <= len(retrieved) <= 10
    (prompt,) = [
        r.body["messages"][0]["content"]
        for r in fake_model_server.requests
        if "ranked most relevant" in r.body["messages"][0]["content"]
    ]
    founder = inst.metadata["chain"][1]
    assert f"by {founder}." in prompt  # BM25 found the document that names the company


def test_no_subcalls_refuses_llm_query_and_says_so(fake_model_server, tmp_path):
    cfg = config("sniah", tmp_path / "out", ["rlm-no-subcalls"])
    (inst,) = instances_of(cfg)
    seen = []

    def model(messages):
        seen.append(messages)
        if len(messages) == 2:
            return (
                "```repl\ntry:\n    llm_query('hi')\nexcept BudgetExceeded as e:\n"
                "    print('refused:', e)\n"
                f"result = {inst.gold!r}\n```"
            )
        return "FINAL_VAR(result)"

    made = run(fake_model_server, cfg, model)
    assert made.rows[0].score == 1.0
    assert "This run has no sub-model" in seen[0][0]["content"]
    assert "refused:" in seen[1][-1]["content"]
    nb = record.read(cfg.out / "runs" / "rlm-no-subcalls" / f"{inst.id}.ipynb")
    assert nb.run.subcalls == 0 and nb.run.limits["max_subcalls"] == 0


@pytest.mark.slow
def test_depth_2_starts_child_runs(fake_model_server, tmp_path):
    cfg = config("sniah", tmp_path / "out", ["rlm-depth-2"])
    (inst,) = instances_of(cfg)

    def model(messages):
        system = messages[0]["content"]
        if "Question: child" in messages[1]["content"]:
            return "FINAL(from the child)" if len(messages) > 2 else "```repl\nprint(1)\n```"
        if len(messages) == 2:
            assert "rlm_query" in system
            code = f"print(rlm_query('child', context=context[:100]))\nresult = {inst.gold!r}"
            return f"```repl\n{code}\n```"
        return "FINAL_VAR(result)"

    made = run(fake_model_server, cfg, model)
    assert made.rows[0].score == 1.0
    nb = record.read(cfg.out / "runs" / "rlm-depth-2" / f"{inst.id}.ipynb")
    children = nb.children()
    assert len(children) == 1 and children[0][2].exists()


@pytest.mark.slow
def test_finished_runs_are_not_run_again(fake_model_server, tmp_path):
    cfg = config("sniah", tmp_path / "out", ["direct"], cache=False)
    (inst,) = instances_of(cfg)
    run(fake_model_server, cfg, oracle([inst]))
    asked = len(fake_model_server.requests)
    cfg2 = config("sniah", tmp_path / "out", ["direct", "rlm"], cache=False)
    made = bench(cfg2, on_result=None)
    assert {r.method for r in made.rows} == {"direct", "rlm"}
    # only the rlm run was new: two root steps, no second direct prompt
    assert len(fake_model_server.requests) == asked + 2


def test_a_run_may_forbid_sub_calls_but_no_other_limit_may_be_zero():
    assert Limits(max_subcalls=0).max_subcalls == 0
    with pytest.raises(ValueError, match="max_steps must be a positive number, not 0"):
        Limits(max_steps=0)
    with pytest.raises(ValueError, match="max_subcalls must be a positive number, not -1"):
        Limits(max_subcalls=-1)
