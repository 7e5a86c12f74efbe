"""The project's import graph, function-local imports included: no cycle, and compress never imports harness."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "compress")


def _modules() -> dict[str, Path]:
    """Dotted name -> source file of every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _targets(node: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Project modules one import statement names.

    `from pkg import sub` names the submodule (a package's __init__ runs before any of its
    submodules, so that implicit step is no edge); `from pkg import name` names the package.
    """
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    out = set()
    for name in names:
        while name and name not in known:  # `import harness.energy.steady` names harness.energy.steady
            name = name.rpartition(".")[0]
        if name:
            out.add(name)
    return out


def import_graph() -> tuple[dict[str, set[str]], int]:
    """module -> project modules it imports (anywhere in its body), and how many imports are lazy."""
    modules = _modules()
    known = set(modules)
    graph, lazy = {}, 0
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        top = {id(n) for n in tree.body}
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not _in_type_checking(tree, node):
                found = _targets(node, module, path.name == "__init__.py", known) - {module}
                edges |= found  # an import only type checkers run is no edge at run time
                lazy += bool(found) and id(node) not in top
        graph[module] = edges
    return graph, lazy


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
            if any(n is node for n in ast.walk(stmt)):
                return True
    return False


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_counting_function_local_imports():
    graph, lazy = import_graph()
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} internal import edges, {lazy} of them lazy")
    assert cycles(graph) == []


def test_compress_never_imports_harness():
    graph, _ = import_graph()
    offenders = {m: sorted(t for t in targets if t.startswith("harness")) for m, targets in graph.items()
                 if m.startswith("compress") and any(t.startswith("harness") for t in targets)}
    assert offenders == {}


def test_the_graph_sees_a_cycle_hidden_in_a_function(tmp_path):
    """The checker itself: a lazy import that closes a loop is a cycle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_importing_the_packages_loads_neither_torch_nor_vllm():
    code = "import sys, harness, compress; print(sorted(m for m in ('torch', 'vllm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
