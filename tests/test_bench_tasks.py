"""The task generators: seeded, sized as asked, and their gold answers true of their contexts."""

from __future__ import annotations

import ast
import re
import sysconfig
from pathlib import Path

import pytest

from rlm_kernel.bench import tasks
from rlm_kernel.bench.tasks import CHARS_PER_TOKEN, context_text, generate, parse_size
from rlm_kernel.bench.tasks.oolong import LABELS
from rlm_kernel.errors import UsageError

LINE = re.compile(r"Date: [A-Z][a-z]{2} \d\d, \d{4} \|\| User: (\d{5}) \|\| Instance: .+\?")


@pytest.mark.parametrize("task", list(tasks.TASKS))
def test_the_same_seed_gives_the_same_instances(task):
    a = generate(task, n=2, seed=3, size_tokens=16_000)
    b = generate(task, n=2, seed=3, size_tokens=16_000)
    c = generate(task, n=2, seed=4, size_tokens=16_000)
    assert [(i.id, i.context, i.question, i.gold) for i in a] == [
        (i.id, i.context, i.question, i.gold) for i in b
    ]
    assert [i.context for i in a] != [i.context for i in c]
    assert a[0].id == f"{task}-16K-s3-0" and a[0].task == task


@pytest.mark.parametrize("task", list(tasks.TASKS))
@pytest.mark.parametrize("size", [8_000, 64_000])
def test_contexts_have_the_size_asked_for(task, size):
    inst = generate(task, n=1, seed=0, size_tokens=size)[0]
    tokens = len(context_text(inst.context)) / CHARS_PER_TOKEN
    assert 0.85 * size <= tokens <= 1.1 * size, tokens


def test_sniah_has_its_needle_once_among_distractors():
    for inst in generate("sniah", n=3, seed=1, size_tokens=32_000):
        key = inst.metadata["key"]
        found = re.findall(rf"magic numbers for {key} is: (\d+)\.", inst.context)
        assert found == [inst.gold]
        assert len(re.findall(r"special magic numbers for", inst.context)) == 5
        assert key in inst.question


def test_sniah_reaches_a_million_tokens():
    inst = generate("sniah", n=1, seed=0, size_tokens=parse_size("1M"))[0]
    assert len(inst.context) >= 4_000_000
    assert f"for {inst.metadata['key']} is: {inst.gold}." in inst.context


def test_oolong_lines_and_gold_answers():
    insts = generate("oolong", n=5, seed=2, size_tokens=16_000)
    assert [i.metadata["kind"] for i in insts][:1] == ["count_label"]
    for inst in insts:
        lines = inst.context.split("\n")
        assert all(LINE.fullmatch(line) for line in lines), lines[0]
        assert not any(label in inst.context for label in ("numeric value", "human being"))
        assert inst.metadata["lines"] == len(lines)
        if inst.scorer == "numeric":
            assert 0 <= inst.gold <= len(lines)
        elif inst.metadata["kind"] == "most_common":
            assert inst.gold in LABELS
        else:
            assert f"User: {inst.gold} " in inst.context
    user = next(i for i in insts if i.metadata["kind"] == "user_count")
    assert user.gold <= inst_lines_of(user, user.metadata["user"])


def inst_lines_of(inst, user):
    return sum(1 for line in inst.context.split("\n") if f"User: {user} " in line)


def test_oolong_pairs_gold_is_sorted_pairs_of_users_in_the_context():
    for inst in generate("oolong-pairs", n=2, seed=5, size_tokens=16_000):
        users = {int(u) for u in LINE.findall(inst.context)}
        qualifying = inst.metadata["qualifying_users"]
        assert len(inst.gold) == qualifying * (qualifying - 1) // 2
        for a, b in inst.gold:
            assert a < b and int(a) in users and int(b) in users
        assert "(id1, id2)" in inst.question


def test_multihop_facts_are_in_different_documents():
    for inst in generate("multihop", n=2, seed=0, size_tokens=64_000):
        assert len(inst.context) >= 200  # hundreds of documents at this size
        chain = inst.metadata["chain"]
        company, founder, city = chain[:3]
        holding = [
            [i for i, d in enumerate(inst.context) if fact in d]
            for fact in (
                f"{company} was founded in",
                f"{founder} was born in the city of {city}.",
                *([f"{city} is a city in {chain[3]}."] if len(chain) == 4 else []),
            )
        ]
        assert all(len(h) == 1 for h in holding), holding
        assert len({h[0] for h in holding}) == len(holding)
        assert inst.gold == chain[-1]
        assert f"by {founder}." in inst.context[holding[0][0]]


def test_codeqa_is_real_stdlib_source_with_verified_answers():
    root = Path(sysconfig.get_paths()["stdlib"])
    kinds = set()
    for inst in generate("codeqa", n=6, seed=0, size_tokens=32_000):
        kinds.add(inst.metadata["kind"])
        for rel, text in inst.context.items():
            assert (root / rel).read_text(encoding="utf-8") == text
        subject = inst.metadata["subject"]
        trees = [ast.parse(t) for t in inst.context.values()]
        defs = [
            n for t in trees for n in ast.walk(t)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        ]  # fmt: skip
        if inst.metadata["kind"] == "defines":
            owners = [
                c.name for c in defs if isinstance(c, ast.ClassDef)
                and any(getattr(m, "name", None) == subject for m in c.body)
            ]  # fmt: skip
            assert owners == [inst.gold]
        elif inst.metadata["kind"] == "calls":
            (caller,) = [d for d in defs if d.name == inst.gold]
            called = {
                getattr(c.func, "id", None) or getattr(c.func, "attr", None)
                for c in ast.walk(caller) if isinstance(c, ast.Call)
            }  # fmt: skip
            assert subject in called
        else:
            (fn,) = [d for d in defs if d.name == subject]
            returns = {ast.unparse(r.value) for r in ast.walk(fn) if isinstance(r, ast.Return)}
            assert inst.gold in returns
    assert kinds == {"defines", "calls", "returns"}


@pytest.mark.parametrize(
    ("text", "tokens"), [("8000", 8000), ("32K", 32_000), ("1.5m", 1_500_000), ("128_000", 128_000)]
)
def test_sizes_are_read_with_suffixes(text, tokens):
    assert parse_size(text) == tokens


@pytest.mark.parametrize("text", ["ten", "10", "-5K", ""])
def test_bad_sizes_are_refused(text):
    with pytest.raises(UsageError, match="size"):
        parse_size(text)


def test_an_unknown_task_is_named():
    with pytest.raises(UsageError, match="unknown task 'nope'; tasks are: sniah, oolong"):
        generate("nope", n=1, seed=0, size_tokens=8000)
