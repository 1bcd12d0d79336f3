"""The house's shape, checked on the source itself (AST, no imports): no import cycle among
certrisk modules (function-level imports included), no source file over 450 lines, no function
over 80 lines (docstring aside), SQL only under governance/, every import going down the floors
of DESIGN.md."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "certrisk"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80
# Floors (DESIGN.md): a module may import only rooms on its floor or below.
FLOOR = {"schemas": 0, "risk": 1, "governance": 1, "reports": 2, "operators": 3, "plugin": 4, "cli": 4}


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """certrisk modules imported anywhere in ``path`` (top level, functions, TYPE_CHECKING aside)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = _module_name(path)
    package = own if path.name == "__init__.py" else own.rsplit(".", 1)[0]
    found: set[str] = set()
    type_checking: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_checking.update(id(n) for sub in node.body for n in ast.walk(sub))
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != own:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    paths = _sources()
    modules = {_module_name(p) for p in paths}
    graph = {}
    for path in paths:
        deps = _imports(path, modules)
        # A package's __init__ importing its own submodules is re-export, not a dependency of the
        # submodules on the package: drop edges from a module to its own package __init__.
        own = _module_name(path)
        graph[own] = {d for d in deps if not own.startswith(d + ".")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_certrisk_modules():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FLOOR else None


def test_imports_go_down_the_floors():
    upward = []
    for module, deps in _graph().items():
        room = _room(module)
        if room is None:
            continue
        for dep in deps:
            other = _room(dep)
            if other is not None and other != room and FLOOR[other] >= FLOOR[room]:
                upward.append(f"{module} -> {dep}")
    assert not upward, "imports across or up the floors: " + ", ".join(sorted(upward))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_source_file_size(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_FILE_LINES, f"{path.relative_to(REPO)} has {n} lines (at most {MAX_FILE_LINES})"


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        first = node.body[0]
        has_doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
        start = first.end_lineno + 1 if has_doc and len(node.body) > 1 else node.lineno
        length = node.end_lineno - start + 1
        if length > MAX_FUNCTION_LINES:
            out.append(f"{node.name} ({length} lines, line {node.lineno})")
    return out


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_function_size(path):
    assert not _long_functions(path), f"{path.relative_to(REPO)}: {_long_functions(path)}"


_SQL = re.compile(
    r"\b(SELECT\s+.+\s+FROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|VIEW|ROLE))\b",
    re.IGNORECASE,
)


def test_sql_lives_under_governance():
    """Queries live behind the store; schemas/tables.py declares tables (an index expression
    there is DDL, not a query)."""
    outside = []
    for path in _sources():
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "governance":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL.search(node.value):
                outside.append(f"{rel}:{node.lineno}")
            if (
                rel != Path("schemas/tables.py")
                and isinstance(node, ast.Attribute)
                and node.attr in {"text", "select"}
                and ast.unparse(node.value) in {"sa", "sqlalchemy"}
            ):
                outside.append(f"{rel}:{node.lineno} ({ast.unparse(node)})")
    assert not outside, "SQL outside governance/: " + ", ".join(outside)
