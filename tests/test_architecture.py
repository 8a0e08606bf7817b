"""The import arrows of DESIGN.md, read from the source, and the curated public surface."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rlm_kernel

PACKAGE = Path(rlm_kernel.__file__).parent

# The layers of DESIGN.md, bottom to top. A module may import modules of its own layer and of
# the layers below it, never above: the run core never imports the user interface, the record
# never imports the engine, and the kernel runtime imports nothing of ours.
LAYERS: list[tuple[str, set[str]]] = [
    ("kernel", {"runtime", "upload", "_dspy_kernel", "_tools_kernel", "_capture"}),
    ("base", {"errors", "types", "llm", "hooks"}),
    ("record", {"record"}),
    (
        "engine",
        {
            "kernel",
            "kernel_process",
            "kernel_messages",
            "exec_result",
            "here",
            "session",
            "gateway",
            "gateway_session",
            "gateway_wire",
            "bridge",
            "bridge_wire",
            "context",
            "outputs",
            "parse",
            "prompts",
            "budget",
            "tools",
            "answer",
        },
    ),
    (
        "run",
        {"run", "compose", "loop", "subcalls", "tree", "fork", "replay", "verify", "batching"},
    ),
    (
        "ui",
        {
            "__init__",
            "__main__",
            "cli",
            "cli_parser",
            "options",
            "mcp",
            "dspy",
            "_dspy_host",
            "_dspy_session",
            "magic",
            "widgets",
            "live",
            "progress",
            "viewer",
            "bundle",
            "demo",
            "trust",
            "testing",
            "bench",
        },
    ),
]
LAYER_OF = {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}


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
    assert owner in LAYER_OF, f"{rel} is a new module: give it a layer in LAYERS"
    if LAYER_OF[owner] == 0:
        assert not imported, f"{rel} runs in the kernel and imports {imported}: stdlib only"
        return
    above = {m for m in imported if LAYER_OF[m] > LAYER_OF[owner]}
    layer = LAYERS[LAYER_OF[owner]][0]
    assert not above, f"{rel} ({layer}) imports {above} from a layer above it"


def test_every_module_has_a_layer():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in MODULES}
    assert tops <= set(LAYER_OF), f"modules without a layer: {tops - set(LAYER_OF)}"


def test_public_names_are_exactly_all():
    public = {n for n in dir(rlm_kernel) if not n.startswith("_")} - {
        # submodules are reachable as attributes once imported; they are not the API
        p.stem
        for p in PACKAGE.iterdir()
    }
    assert public | {"__version__"} == set(rlm_kernel.__all__)
