"""The package layout holds: no import circles, the library never imports its front doors, small modules.

The import graph is read from the source with ``ast`` (every ``import``/``from ... import``, also inside
functions), so a lazy import counts like any other. Front doors are the KFP components and pipelines, the
Ray entrypoints and the CLI commands; the library (everything else under ``tightfit/``) must not import them.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Installed names of the source folders (pyproject's package-dir).
SOURCES = {"tightfit": "tightfit", "tightfit.components": "components", "tightfit.pipelines": "pipelines",
           "tightfit.ray_jobs": "ray_jobs"}
FRONT_DOORS = ("tightfit.components", "tightfit.pipelines", "tightfit.ray_jobs", "tightfit.commands")
MAX_LINES = 450
MAX_MODULES_PER_FOLDER = 12


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in SOURCES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted import target lands in (``tightfit.compress.build_variant`` -> the package)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the tightfit modules it imports (package ``__init__`` re-exports excluded as sources)."""
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                if target.startswith("tightfit"):
                    found = _resolve(target, modules)
                    if found and found != name:
                        graph[name].add(found)
        graph.setdefault(name, set())
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def _is_library(module: str) -> bool:
    return not module.startswith((*FRONT_DOORS, "tightfit.cli"))


def test_the_import_graph_has_no_circles() -> None:
    assert _cycles(import_graph()) == []


def test_the_library_never_imports_a_front_door() -> None:
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if _is_library(module)
        for target in targets
        if target.startswith(FRONT_DOORS)
    )
    assert upward == []


def test_the_checker_sees_circles_and_upward_imports() -> None:
    """The graph walk itself must catch what it guards against (a lazy import counts too)."""
    graph = {"tightfit.a": {"tightfit.b"}, "tightfit.b": {"tightfit.a"}, "tightfit.c": set()}
    assert _cycles(graph) == [["tightfit.a", "tightfit.b"]]
    modules = _modules()
    assert _resolve("tightfit.compress.build_variant", modules) == "tightfit.compress"
    assert "tightfit.serve.app" in import_graph()["tightfit.serve.calibrate"], "a lazy import is an edge"
    assert not _is_library("tightfit.commands.serve") and _is_library("tightfit.serve.plan")


@pytest.mark.parametrize("folder", sorted({p.parent for p in (ROOT / "tightfit").rglob("*.py")}), ids=str)
def test_modules_stay_small_and_folders_readable(folder: Path) -> None:
    modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
    long = {p.name: n for p in modules if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by responsibility inside {folder.name}/: {long}"
    if folder != ROOT / "tightfit":
        assert len(modules) <= MAX_MODULES_PER_FOLDER, f"{folder} holds {len(modules)} modules"
    else:  # the top level keeps only the shared vocabulary (errors, units, names, spec, config, ...)
        assert len(modules) <= 15, sorted(p.name for p in modules)


def test_package_inits_only_re_export() -> None:
    for init in (ROOT / "tightfit").rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        for node in tree.body:
            allowed = (ast.Import, ast.ImportFrom, ast.Expr)  # imports and the docstring
            if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] in (["__all__"],
                                                                                                  ["__version__"]):
                continue
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                continue  # imports for type checkers only
            if init.parent == ROOT / "tightfit" and isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
                continue  # the top-level package re-exports load_variant lazily (it imports torch's world)
            assert isinstance(node, allowed), f"{init.relative_to(ROOT)}:{node.lineno} defines code"
