"""Run trees: rlm_query starts child runs, each its own kernel and notebook, on one budget."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from rlm_kernel import RLM
from rlm_kernel.cli import main
from rlm_kernel.record import read
from rlm_kernel.types import Completion, Usage

pytestmark = pytest.mark.slow

WORDS = ("apple", "pear", "plum", "fig")
CONTEXT = " ".join(WORDS[(i * 7 + i // 3) % 4] for i in range(400))
APPLES = CONTEXT.split().count("apple")
PRICE = 0.001  # dollars per call of the scripted models


class Scripted:
    """A priced model that plays by the question it is asked, whichever run asks it.

    The root splits the context into four chunks for four children; the first child hands its
    chunk on to a grandchild; every grandchild asks the sub-model once and counts.
    """

    name = "scripted:tree"

    async def complete(self, messages, *, max_tokens):
        question = messages[1]["content"]
        replies = sum(m["role"] == "assistant" for m in messages)
        text = self.reply(question, replies)
        return Completion(
            text=text,
            model=self.name,
            usage=Usage(calls=1, input_tokens=100, output_tokens=10),
            cost_usd=PRICE,
        )

    def reply(self, question: str, replies: int) -> str:
        if "grandchild" in question:
            return (
                "```repl\ntry:\n    note = llm_query('say ok')\nexcept BudgetExceeded as e:\n"
                "    note = 'refused'\n    print('BudgetExceeded:', e)\n"
                "print(note)\nn = context.split().count('apple')\n```\nFINAL_VAR(n)"
            )
        if "chunk 0" in question:
            return (
                "```repl\nn = int(rlm_query('count apples (grandchild)', context=context))\n"
                "print(n)\n```\nFINAL_VAR(n)"
            )
        if "chunk" in question:
            return "```repl\nn = context.split().count('apple')\n```\nFINAL_VAR(n)"
        if replies == 0:
            return (
                "```repl\nwords = context.split()\nq = len(words) // 4\n"
                "ends = [q, 2 * q, 3 * q, None]\n"
                "chunks = [' '.join(words[i * q:ends[i]]) for i in range(4)]\n"
                "counts = rlm_query_batched([f'count apples in chunk {i}' for i in range(4)], "
                "contexts=chunks)\nprint(counts)\ntotal = sum(int(c) for c in counts)\n```"
            )
        return "FINAL_VAR(total)"


class Sub:
    name = "scripted:sub"

    async def complete(self, messages, *, max_tokens):
        usage = Usage(calls=1, input_tokens=20, output_tokens=2)
        return Completion(text="ok", model=self.name, usage=usage, cost_usd=PRICE / 2)


def notebooks(root: Path) -> list[Path]:
    return [root, *sorted(root.with_name(f"{root.stem}.children").rglob("*.ipynb"))]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tree")
    root = folder / "root.ipynb"
    events = []
    rlm = RLM(
        Scripted(),
        Sub(),
        max_depth=3,
        max_subcalls=20,
        max_cost_usd=1.0,
        on_child=lambda **kw: events.append((kw["event"], kw["depth"])),
    )
    result = rlm.run("How many apples?", CONTEXT, notebook=root)
    return root, result, events


def test_children_answer_and_the_root_adds_them_up(tree):
    root, result, events = tree
    assert (result.status, result.answer) == ("answered", str(APPLES))
    paths = notebooks(root)
    assert len(paths) == 1 + 4 + 1
    for path in paths:
        nbformat.validate(nbformat.read(path, as_version=4))
        assert read(path).run.status == "answered"
    assert sorted(e for e in events if e[0] in ("start", "end")) == sorted(
        [("start", 2)] * 4 + [("end", 2)] * 4 + [("start", 3), ("end", 3)]
    )
    # Every child (one step each) reports its steps through the same hook.
    assert sorted(e for e in events if e[0] == "step") == [("step", 2)] * 4 + [("step", 3)]
    # ... and each step again once its code has run.
    assert sorted(e for e in events if e[0] == "step_end") == [("step_end", 2)] * 4 + [
        ("step_end", 3)
    ]


def test_parents_and_children_link_both_ways(tree):
    root, _, _ = tree
    for path in notebooks(root):
        run = read(path)
        for cell, sub, child_path in run.children():
            assert child_path.is_file(), f"{path} links a missing child {sub.child}"
            child = read(child_path)
            assert child.run.depth == run.run.depth + 1
            parent = child.run.parent
            assert (path.parent / child_path.parent / parent.notebook).resolve() == path.resolve()
            assert (parent.run_id, parent.step, parent.block, parent.subcall) == (
                run.run.run_id,
                cell.step,
                cell.block,
                sub.id,
            )
            assert child_path.name == f"{cell.step}.{cell.block}-{sub.id}.ipynb"
    # The root's summary shows the whole tree.
    summary = read(root).run.children
    assert sorted(c.depth for c in summary) == [2, 2, 2, 2, 3]
    text = nbformat.read(root, as_version=4).cells[0].source
    assert "**Child runs**" in text and text.count("root.children/") == 5


def test_the_roots_totals_are_the_sum_over_the_tree(tree):
    root, result, _ = tree
    runs = [read(p) for p in notebooks(root)]
    steps = sum(len([s for s in r.steps if s.has_reply]) for r in runs)
    subcalls = sum(len(c.subcalls) for r in runs for c in r.code_cells)
    llm_calls = sum(s.kind == "llm" for r in runs for _c, s in r.subcalls())
    assert result.subcalls == subcalls == read(root).run.subcalls
    assert result.usage["root"].calls == steps
    assert result.usage["sub"].calls == llm_calls == 1
    assert result.cost_usd == pytest.approx(steps * PRICE + llm_calls * PRICE / 2)
    assert result.cost_usd <= 1.0 and result.subcalls <= 20


def test_replay_follows_the_tree_and_names_a_tampered_grandchild(tree, tmp_path, capsys):
    root, _, _ = tree
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(root.parent, copy)
    code = main(["replay", str(copy / root.name), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert len([report, *_walk(report)]) == 6

    (grandchild,) = (copy / "root.children").rglob("*.children/*.ipynb")
    data = json.loads(grandchild.read_text())
    for cell in data["cells"]:
        for sub in cell.get("metadata", {}).get("rlm", {}).get("subcalls", []):
            if sub["kind"] == "llm":
                sub["response"] = "tampered"
    grandchild.write_text(json.dumps(data))
    code = main(["replay", str(copy / root.name)])
    err = capsys.readouterr().err
    assert code == 1
    rel = grandchild.relative_to(copy).as_posix()
    assert re.search(rf"{re.escape(rel)} step 1\.1: differs", err), err
    assert main(["replay", str(copy / root.name), "--shallow"]) == 0


def _walk(report):
    for child in report["children"]:
        yield child
        yield from _walk(child)


def test_a_budget_spent_in_a_grandchild_reaches_its_code(tmp_path):
    root = tmp_path / "root.ipynb"
    # Sub-calls: 4 children + 1 grandchild = 5; the grandchild's llm_query is the 6th.
    result = RLM(Scripted(), Sub(), max_depth=3, max_subcalls=5).run(
        "How many apples?", CONTEXT, notebook=root
    )
    assert result.status in ("answered", "no_answer")
    assert result.subcalls == 5
    for path in notebooks(root):
        nbformat.validate(nbformat.read(path, as_version=4))
    (grandchild,) = root.with_name("root.children").rglob("*.children/*.ipynb")
    (cell,) = read(grandchild).code_cells[:1]
    assert "BudgetExceeded: sub-call budget exhausted: 5 used of 5" in cell.outputs[0]["text"]
    assert cell.subcalls[0].error.type == "BudgetExceeded"


def test_at_the_maximum_depth_rlm_query_is_a_sub_model_call(tmp_path):
    root = tmp_path / "root.ipynb"
    rlm = RLM(Scripted(), Sub(), max_depth=2, child_max_steps=2)
    result = rlm.run("How many apples?", CONTEXT, notebook=root)
    # The first child asks for a grandchild, which depth 2 does not allow: the sub-model answers
    # "ok", int("ok") fails in that child, and the root gets its failure.
    (first,) = [p for p in notebooks(root)[1:] if read(p).run.question.endswith("chunk 0")]
    (cell,) = read(first).code_cells[:1]
    (sub,) = cell.subcalls
    assert (sub.kind, sub.child, sub.response) == ("rlm", None, "ok")
    assert "maximum depth" in sub.note
    assert len(notebooks(root)) == 1 + 4
    assert result.status in ("answered", "no_answer")


def test_a_fork_meets_a_recorded_budget_refusal_as_budget_exceeded(tmp_path):
    replies = iter(
        [
            "```repl\nllm_query('one')\ntry:\n    llm_query('two')\n"
            "except BudgetExceeded:\n    print('refused as budget')\n```",
            "FINAL(done)",
        ]
    )
    parent = tmp_path / "parent.ipynb"
    result = RLM(lambda m: next(replies), lambda m: "x", max_subcalls=1).run(
        "q", "ctx", notebook=parent
    )
    assert result.answer == "done"
    # Replaying step 1 in the fork raises BudgetExceeded again (not a SubcallError), so the
    # cell ends as recorded and the fork goes on.
    fork = RLM(lambda m: "FINAL(forked)", lambda m: "x").resume(
        parent, from_step=2, out=tmp_path / "fork.ipynb"
    )
    assert (fork.status, fork.answer) == ("answered", "forked")
    (cell,) = read(tmp_path / "fork.ipynb").code_cells
    assert cell.subcalls[1].error.type == "BudgetExceeded"


def test_view_bundle_and_fork_keep_the_tree(tree, tmp_path, capsys):
    root, _result, _ = tree
    assert main(["view", str(root)]) == 0
    out = capsys.readouterr().out
    assert "child runs" in out and out.count("root.children/") == 5

    from rlm_kernel.bundle import bundle_run

    bundle = bundle_run(root, tmp_path / "bundle")
    copied = sorted(p.relative_to(bundle.dir).as_posix() for p in bundle.dir.rglob("*.ipynb"))
    assert len(copied) == 6 and copied[0] == "root.children/1.1-1.children/1.1-1.ipynb"
    assert main(["replay", str(bundle.notebook), "--json"]) == 0
    capsys.readouterr()

    # A fork from step 2 replays step 1 (its children answered from the record, not re-run)
    # and its copied cell still links the parent's children.
    fork_nb = root.with_name("fork.ipynb")
    fork = RLM(lambda m: "FINAL_VAR(total)", Sub(), max_depth=3).resume(
        root, from_step=2, out=fork_nb
    )
    assert (fork.status, fork.answer) == ("answered", str(APPLES))
    links = read(fork_nb).children()
    assert len(links) == 4 and all(path.is_file() for _c, _s, path in links)
    assert not fork_nb.with_name("fork.children").exists()  # no child ran again
