"""The package's shape: dependencies point one way, modules keep their private names,
functions stay short enough to read.

Imports are read from the source (module level, inside functions and under
``TYPE_CHECKING`` alike: a lazy import is still a dependency), not by importing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ser"
MAX_FUNCTION_LINES = 80
# A function may be longer when the line above its ``def`` (or its decorators) is a
# comment starting with this marker that says why.
LONG_MARKER = "# Long:"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """``(module, names)`` for each import of a ``ser`` module in ``path``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] == "ser"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "ser":
                continue
            names = [a.name for a in node.names]
            # ``from ser.data import corpora`` imports the module ser.data.corpora.
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            found += [(m, []) for m in submodules]
            plain = [n for n in names if f"{base}.{n}" not in modules]
            if plain:
                found.append((base, plain))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {target for target, _ in imported_names(path, modules) if target in modules}
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def long_functions(path: Path) -> list[str]:
    """``name (N lines)`` of each function over the limit without a ``# Long:`` comment."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        length = node.end_lineno - node.lineno + 1
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        above = lines[first - 2].strip() if first >= 2 else ""
        if length > MAX_FUNCTION_LINES and not above.startswith(LONG_MARKER):
            out.append(f"{node.name} ({length} lines, line {node.lineno})")
    return out


def test_the_graph_reader_sees_relative_and_lazy_imports(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    edges = import_graph()
    # A lazy import inside a function is an edge: evaluation loads baselines lazily.
    assert "ser.baselines" in edges["ser.evaluation"]
    # ``from ser.data import corpora``-style and relative imports resolve to modules.
    assert any(target.startswith("ser.data.") for target in edges["ser.training"])


def test_no_import_cycle_inside_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_imports_another_modules_private_names():
    modules = package_modules()
    offenders = [
        f"{module_name(path)} imports {name} from {target}"
        for path in modules.values()
        for target, names in imported_names(path, modules)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert offenders == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_functions_stay_short_unless_a_comment_says_why(path):
    assert long_functions(path) == []


def test_the_length_rule_can_fail_and_honours_the_marker(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    source = tmp_path / "m.py"
    source.write_text(f"def long():\n{body}\n")
    assert long_functions(source) == [f"long ({MAX_FUNCTION_LINES + 2} lines, line 1)"]
    source.write_text(f"{LONG_MARKER} one table of routes.\ndef long():\n{body}\n")
    assert long_functions(source) == []
