"""CodeQA over the Python standard library's own source, questions and answers from ``ast``.

The context is a dict ``{relative path: source}`` of standard-library modules (the code base
that ships with every Python), chosen by the seed until the size is reached. Questions:
which class defines a method, which function calls a name, what a function returns. Each is
asked only when the context has exactly one right answer, and the answer is checked against
the context's own text before the instance is made.
"""

from __future__ import annotations

import ast
import functools
import random
import sysconfig
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ._common import CHARS_PER_TOKEN, Instance

ABOUT = "which class defines / which function calls / what returns, in stdlib source (exact)"
_SKIP_PARTS = frozenset(
    {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__"}
)
_MAX_RETURN_CHARS = 40


class NoQuestionError(RuntimeError):
    """The chosen files give no question with a single verified answer."""


@functools.cache
def stdlib_files() -> tuple[tuple[str, int], ...]:
    """(path relative to the standard library, size in bytes) of its Python modules, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_PARTS & set(rel.parts):
            continue
        found.append((rel.as_posix(), path.stat().st_size))
    return tuple(found)


def _read(rel: str) -> str | None:
    path = Path(sysconfig.get_paths()["stdlib"]) / rel
    try:
        text = path.read_text(encoding="utf-8")
        ast.parse(text)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return None
    return text


def choose_files(rng: random.Random, size_tokens: int) -> dict[str, str]:
    """Standard-library sources adding up to about ``size_tokens`` tokens."""
    budget = size_tokens * CHARS_PER_TOKEN
    files = list(stdlib_files())
    rng.shuffle(files)
    chosen: dict[str, str] = {}
    total = 0
    for rel, size in files:
        if total + size > budget * 1.02:
            continue
        text = _read(rel)
        if text is None:
            continue
        chosen[rel] = text
        total += len(text)
        if total >= budget * 0.9:
            break
    return dict(sorted(chosen.items()))


@dataclass
class _Index:
    defs: dict[str, list[str]]  # bare function/method name -> where (path:qualname)
    classes: dict[str, list[str]]  # class name -> paths
    methods: dict[str, set[str]]  # method name -> classes defining it
    callers: dict[str, set[str]]  # called name -> bare names of the functions calling it
    returns: dict[str, set[str]]  # function bare name -> unparsed returned expressions


def index(trees: dict[str, ast.Module]) -> _Index:
    """What the questions are drawn from: the parsed files ``{path: tree}``."""
    idx = _Index(
        defs=defaultdict(list),
        classes=defaultdict(list),
        methods=defaultdict(set),
        callers=defaultdict(set),
        returns=defaultdict(set),
    )
    for rel, tree in trees.items():
        _walk(tree, rel, idx, cls=None, func=None)
    return idx


def _walk(node: ast.AST, rel: str, idx: _Index, *, cls: str | None, func: str | None) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            idx.classes[child.name].append(rel)
            _walk(child, rel, idx, cls=child.name, func=None)
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            idx.defs[child.name].append(f"{rel}:{cls + '.' if cls else ''}{child.name}")
            if cls is not None and func is None:
                idx.methods[child.name].add(cls)
            returned = {
                ast.unparse(r.value) if r.value is not None else "None" for r in _own_returns(child)
            }
            idx.returns[child.name] |= returned or {"<none>"}
            _walk(child, rel, idx, cls=None, func=child.name)
        else:
            if isinstance(child, ast.Call) and func is not None:
                target = child.func
                name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", None)
                if name:
                    idx.callers[name].add(func)
            _walk(child, rel, idx, cls=cls, func=func)


def _own_returns(fn: ast.AST) -> list[ast.Return]:
    """The return statements of ``fn`` itself, not of functions or classes nested in it."""
    out: list[ast.Return] = []
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Return):
            out.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))
    return out


def _candidates(idx: _Index) -> dict[str, list[tuple[str, str]]]:
    unique_def = {n for n, where in idx.defs.items() if len(where) == 1}
    defines = [
        (m, next(iter(c)))
        for m, c in idx.methods.items()
        if len(c) == 1
        and m in unique_def
        and len(idx.classes[next(iter(c))]) == 1
        and not m.startswith("__")
    ]
    calls = [
        (callee, next(iter(callers)))
        for callee, callers in idx.callers.items()
        if len(callers) == 1
        and next(iter(callers)) in unique_def
        and callee in idx.defs
        and callee != next(iter(callers))
    ]
    returns = [
        (fn, next(iter(exprs)))
        for fn, exprs in idx.returns.items()
        if fn in unique_def
        and len(exprs) == 1
        and next(iter(exprs)) not in ("<none>", "None")
        and len(next(iter(exprs))) <= _MAX_RETURN_CHARS
        and "\n" not in next(iter(exprs))
    ]
    return {"defines": sorted(defines), "calls": sorted(calls), "returns": sorted(returns)}


def _verify(
    files: dict[str, str], trees: dict[str, ast.Module], kind: str, subject: str, gold: str
) -> bool:
    """Check the answer against the source text again, by another route than the index."""
    for rel, tree in trees.items():
        for node in ast.walk(tree):
            if kind == "defines" and isinstance(node, ast.ClassDef) and node.name == gold:
                return any(
                    isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == subject
                    for n in node.body
                )
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if kind == "calls" and node.name == gold:
                return f"{subject}(" in (ast.get_source_segment(files[rel], node) or "")
            if kind == "returns" and node.name == subject:
                segment = textwrap.dedent(ast.get_source_segment(files[rel], node) or "")
                returned = {
                    ast.unparse(r.value)
                    for r in ast.walk(ast.parse(segment))
                    if isinstance(r, ast.Return) and r.value is not None
                }
                return returned == {gold}
    return False


_QUESTIONS = {
    "defines": "Which class defines the method `{s}`? Answer with the class name alone.",
    "calls": (
        "Which function or method calls `{s}`? Answer with its name alone, without its class "
        "or module."
    ),
    "returns": (
        "What does the function or method `{s}` return? Answer with the returned Python "
        "expression alone, exactly as written in its return statement."
    ),
}


def generate(rng: random.Random, size_tokens: int, index_: int) -> Instance:
    """One question over standard-library sources of about ``size_tokens`` tokens.

    Raises:
        NoQuestionError: no question with a single verified answer (a tiny size).
    """
    files = choose_files(rng, size_tokens)
    trees = {rel: ast.parse(text) for rel, text in files.items()}
    candidates = _candidates(index(trees))
    kinds = ["defines", "calls", "returns"]
    start = index_ % len(kinds)
    for kind in kinds[start:] + kinds[:start]:
        pool = candidates[kind]
        rng.shuffle(pool)
        for subject, gold in pool[:50]:
            if _verify(files, trees, kind, subject, gold):
                return Instance(
                    id="",
                    task="codeqa",
                    size_tokens=size_tokens,
                    context=files,
                    question=(
                        "The context maps file paths of Python's standard library to their "
                        "source code. " + _QUESTIONS[kind].format(s=subject)
                    ),
                    gold=gold,
                    scorer="exact",
                    metadata={"kind": kind, "subject": subject, "files": len(files)},
                )
    raise NoQuestionError(
        f"no CodeQA question with a single verified answer in {len(files)} files "
        f"at {size_tokens} tokens; choose a larger size"
    )
