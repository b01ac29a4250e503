"""The library's layout (docs/CONVENTIONS.md): packages import only downwards, no module imports
itself back through others, and a module past ~600 lines is one concern named in the docs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "circuit_insights"
CONVENTIONS = ROOT / "docs" / "CONVENTIONS.md"

#: Each top-level package's rank: a module may import from its own rank or below, never above.
RANKS: dict[str, int] = {
    "core": 0,
    "models": 1,
    "transcoders": 1,
    "llm": 1,
    "data": 1,
    "interop": 1,
    "weightlens": 2,
    "circuitlens": 2,
    "explain": 2,
    "evaluation": 2,
    "report": 3,
    "pipeline": 4,
}
#: Lines past which a module must be listed in CONVENTIONS.md as one concern.
LONG_MODULE_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path) -> set[str]:
    """The circuit_insights modules ``path`` imports (anywhere, function bodies included; not
    under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if _in_type_checking(node, parents):
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("circuit_insights"):
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    found.add(candidate if _exists(candidate) else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("circuit_insights"))
    return found


def _exists(module: str) -> bool:
    relative = Path(*module.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative).is_dir()


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path) & set(modules) for name, path in modules.items()}


def top_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_package_has_a_rank():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("_")}
    packages -= {"templates"}
    assert packages <= set(RANKS), sorted(packages - set(RANKS))


def test_packages_import_only_downwards():
    upward = []
    for module, imported in graph().items():
        own = top_package(module)
        for target in imported:
            theirs = top_package(target)
            if own in RANKS and theirs in RANKS and RANKS[theirs] > RANKS[own]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports from a lower package into a higher one:\n" + "\n".join(upward)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles():
    # A package's __init__ importing its own submodules is how a package exposes its table
    # (transcoders.formats, pipeline.preflight): edges into a package from its own submodules
    # through the package name are not circles of concerns.
    edges = {
        module: {t for t in targets if not module.startswith(t + ".")}
        for module, targets in graph().items()
    }
    assert not _cycles(edges)


def test_the_circle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    "path",
    sorted(p for p in PACKAGE.rglob("*.py")),
    ids=lambda p: p.relative_to(PACKAGE).as_posix(),
)
def test_long_modules_are_single_concerns_named_in_the_conventions(path: Path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    if lines <= LONG_MODULE_LINES:
        return
    relative = path.relative_to(PACKAGE).as_posix()
    assert f"`{relative}`" in CONVENTIONS.read_text(encoding="utf-8"), (
        f"{relative} has {lines} lines: split it, or say in docs/CONVENTIONS.md why it is one concern"
    )
