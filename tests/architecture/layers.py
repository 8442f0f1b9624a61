"""The floors of the house, as rules over the import graph (read from the source, never run).

From the ground up: the pure model (``domain.model``) -> the application (``domain.app``)
-> projections -> api and workers -> ops (adapters, the composition root, entry points).
``node`` stands on the pure model alone: it is deployed apart from the hub.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("domain", "projections", "workers", "api", "node", "ops")

# What each layer may import from the project (prefixes); anything else of the project is a
# violation. Third-party and standard-library imports are not constrained here, except for
# the pure model (below).
ALLOWED: dict[str, tuple[str, ...]] = {
    "domain.model": ("domain.model",),
    "domain.app": ("domain.model", "domain.app"),
    "domain": ("domain.model", "domain.app", "domain"),
    "projections": ("domain.model", "domain.app", "projections"),
    "workers": ("domain.model", "domain.app", "projections", "workers"),
    "api": ("domain.model", "domain.app", "projections", "api"),
    "node": ("domain.model", "node"),
    "ops": PACKAGES,
}

# The pure model does no I/O, reads no clock, starts no thread and does not log.
IMPURE_FOR_MODEL = (
    "asyncio", "threading", "multiprocessing", "concurrent", "logging", "structlog", "socket", "ssl", "select",
    "selectors", "sqlite3", "psycopg", "psycopg_pool", "redis", "dramatiq", "falcon", "requests", "urllib.request",
    "http", "subprocess", "time", "os", "shutil", "tempfile", "stripe", "web3", "gunicorn", "uvicorn", "random",
)
CLOCK_CALLS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "uuid1", "uuid4"}

COMPOSITION_ROOT = "ops.bootstrap"
# The entry points: the only modules that may build the runtime from settings.
ENTRY_POINTS = ("ops.cli", "ops.serve", "ops.bench")


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (or module.name)
    line: int
    typing_only: bool  # inside ``if TYPE_CHECKING:``


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_files(root: Path) -> Iterable[Path]:
    for package in PACKAGES:
        base = root / package
        if base.is_dir():
            yield from sorted(p for p in base.rglob("*.py") if "node_modules" not in p.parts)


def imports_of(root: Path, path: Path) -> list[Import]:
    source = module_name(root, path)
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, True)
                for stmt in child.orelse:
                    visit_stmt(stmt, typing_only)
                continue
            visit_stmt(child, typing_only)

    def visit_stmt(stmt: ast.AST, typing_only: bool) -> None:
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                found.append(Import(source, alias.name, stmt.lineno, typing_only))
        elif isinstance(stmt, ast.ImportFrom):
            base = _resolve(source, path, stmt)
            for alias in stmt.names:
                found.append(Import(source, f"{base}.{alias.name}" if base else alias.name, stmt.lineno, typing_only))
        else:
            visit(stmt, typing_only)

    visit(tree, False)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(source: str, path: Path, stmt: ast.ImportFrom) -> str:
    if not stmt.level:
        return stmt.module or ""
    package = source.split(".") if path.name == "__init__.py" else source.split(".")[:-1]
    package = package[: len(package) - (stmt.level - 1)]
    return ".".join([*package, *([stmt.module] if stmt.module else [])])


def layer_of(module: str) -> str | None:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def is_project(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def violations(root: Path) -> list[str]:
    """Every broken rule, one line each: ``file:line: what``."""
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    modules = {module_name(root, p): p for p in project_files(root)}
    for module, path in modules.items():
        layer = layer_of(module)
        rel = path.relative_to(root)
        for imp in imports_of(root, path):
            target = _known(imp.target, modules)
            if imp.target == "tests" or imp.target.startswith("tests."):
                problems.append(f"{rel}:{imp.line}: production code imports the tests ({imp.target})")
            if layer == "domain.model" and not is_project(imp.target) and not imp.typing_only:
                top = imp.target
                if any(top == bad or top.startswith(bad + ".") for bad in IMPURE_FOR_MODEL):
                    problems.append(f"{rel}:{imp.line}: the pure model imports {imp.target} (I/O, clock or threads)")
            if target is None:
                continue
            if not imp.typing_only:
                graph.setdefault(module, set()).add(target)
            if layer is not None and not any(target == a or target.startswith(a + ".") for a in ALLOWED[layer]):
                problems.append(f"{rel}:{imp.line}: {layer} may not import {target}")
            if (target == COMPOSITION_ROOT and module != COMPOSITION_ROOT
                    and not any(module == e or module.startswith(e + ".") for e in ENTRY_POINTS)):
                problems.append(f"{rel}:{imp.line}: only entry points import the composition root ({module})")
        if layer == "domain.model":
            problems.extend(f"{rel}:{line}: the pure model reads the clock or makes ids ({call})"
                            for line, call in _clock_calls(path))
    problems.extend(f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph))
    return problems


def _known(target: str, modules: dict[str, Path]) -> str | None:
    """The project module an import names (``pkg.mod.Name`` -> ``pkg.mod``), if any."""
    if not is_project(target):
        return None
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def _clock_calls(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in CLOCK_CALLS:
                found.append((node.lineno, name))
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found
