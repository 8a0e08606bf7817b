"""The import arrows of DESIGN.md, read from the source, and the curated public surface."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rlm_kernel

PACKAGE = Path(rlm_kernel.__file__).parent

# What each module may import from the package. Anything not listed imports nothing of ours.
ALLOWED: dict[str, set[str]] = {
    "__init__": {"context", "errors", "llm", "magic", "run", "types", "widgets"},
    "__main__": {"cli"},
    "cli": {
        "__init__",
        "bundle",
        "demo",
        "errors",
        "live",
        "llm",
        "replay",
        "run",
        "types",
        "testing",
        "viewer",
    },
    "bundle": {"__init__", "context", "errors", "notebook", "replay"},
    "magic": {"context", "errors", "here", "live", "replay", "run", "types"},
    "here": {"errors", "kernel", "outputs"},
    "live": {"errors", "notebook", "parse", "types"},
    "viewer": {"errors", "llm", "notebook", "types"},
    "widgets": {"notebook", "viewer"},
    "replay": {"context", "errors", "kernel", "llm", "notebook", "outputs", "parse", "runtime"},
    "demo": {"llm"},
    "run": {
        "bridge",
        "budget",
        "context",
        "errors",
        "kernel",
        "live",
        "llm",
        "notebook",
        "outputs",
        "parse",
        "prompts",
        "replay",
        "runtime",
        "types",
    },
    "kernel": {"errors", "outputs", "types"},
    "bridge": {"errors", "types"},
    "budget": {"errors", "types"},
    "context": {"errors"},
    "notebook": {"errors", "types"},
    "outputs": set(),
    "parse": set(),
    "prompts": {"context", "runtime", "types"},
    "llm": {"errors", "types", "llm"},
    "types": {"errors"},
    "errors": set(),
    "trust": {"errors"},
    "runtime": set(),  # runs inside the kernel: the standard library only
    "testing": {"testing"},
}


def package_imports(path: Path) -> set[str]:
    """Top-level names of rlm_kernel modules that ``path`` imports."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    here = list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                parts = [*base, *(node.module.split(".") if node.module else [])]
                names = [parts] if node.module else [[*base, a.name] for a in node.names]
            elif (node.module or "").startswith("rlm_kernel"):
                names = [node.module.split(".")[1:]]
            else:
                continue
            for parts in names:
                top = parts[0] if parts else "__init__"
                is_module = (PACKAGE / f"{top}.py").exists() or (PACKAGE / top).is_dir()
                found.add(top if is_module else "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rlm_kernel."):
                    found.add(alias.name.split(".")[1])
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_design(path):
    rel = path.relative_to(PACKAGE)
    owner = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    imported = package_imports(path) - {rel.stem if len(rel.parts) == 1 else owner}
    assert owner in ALLOWED, f"{rel} is a new module: add it to ALLOWED with its arrows"
    assert imported <= ALLOWED[owner] | {owner}, f"{rel} imports {imported - ALLOWED[owner]}"


def test_public_names_are_exactly_all():
    public = {n for n in dir(rlm_kernel) if not n.startswith("_")} - {
        # submodules are reachable as attributes once imported; they are not the API
        p.stem
        for p in PACKAGE.iterdir()
    }
    assert public | {"__version__"} == set(rlm_kernel.__all__)
