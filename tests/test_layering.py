"""The shape of core/'s import graph, read from the source with `ast` (nothing is imported).

Every import counts, at module level and inside functions alike: a function-level import hides a
cycle from Python's import machinery but not from a reader, and it still means two modules each
need the other. An edge goes to the module an import names (`from .vector.live import x` ->
core.vector.live; `from . import library` -> core.library), not to the packages above it, whose
`__init__` re-exports are a convenience and not a dependency of the module imported. The one
exception is a script guard, `if __name__ == "__main__":`: what it imports runs only when the file
is the program, never when another module imports it (core/train.py hands `python -m core.train`
to core/train_cli.py that way), so it is no edge.
"""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def _is_script_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
            and len(node.test.comparators) == 1 and isinstance(node.test.comparators[0], ast.Constant)
            and node.test.comparators[0].value == "__main__")


def _walk_outside_script_guard(tree: ast.AST):
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(c for c in ast.iter_child_nodes(node) if not _is_script_guard(c))


def _imports(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(core modules `name` imports, top-level names of everything it imports)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inside, tops = set(), set()
    for node in _walk_outside_script_guard(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import sub` names the submodule when there is one
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
        else:
            continue
        for t in targets:
            tops.add(t.split(".")[0])
            if t in known:
                inside.add(t)
    inside.discard(name)
    return inside, tops


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    mods = _modules()
    edges, tops = {}, {}
    for name, path in mods.items():
        edges[name], tops[name] = _imports(name, path, set(mods))
    return edges, tops


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_parser_sees_known_edges():
    """A guard on the reader itself: edges this codebase is known to have, of each import form."""
    edges, _ = _graph()
    assert "core.errors" in edges["core.jobs"]                 # from .errors import ...
    assert "core.library" in edges["core.dreambooth"]          # from . import library
    assert "core.vector.live" in edges["core.vectorfusion"]    # from .vector.live import ...
    assert "core.errors" in edges["core.vector.svg_io"]        # from ..errors import ...
    assert "core.tiny" in edges["core.models"]                 # a function-level import
    assert "core.train_cli" not in edges["core.train"]         # only under the script guard


def test_core_has_no_import_cycle():
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_core_never_imports_the_ui():
    _, tops = _graph()
    bad = {m: sorted(t & {"gradio", "gradio_client", "tabs", "app"}) for m, t in tops.items()}
    assert {m: b for m, b in bad.items() if b} == {}


def test_the_store_only_persists():
    """The store's modules keep files and rows: they never import peft, nor the modules that
    put adapters onto models or run them (core/adapters.py, core/library.py, the engine, the
    trainer)."""
    edges, tops = _graph()
    store = [m for m in edges if m == "core.store" or m.startswith("core.store_")]
    assert len(store) >= 4
    above = {"core.adapters", "core.library", "core.engine", "core.train", "core.train_data",
             "core.train_checkpoints", "core.train_cli"}
    assert {m: sorted(edges[m] & above) for m in store if edges[m] & above} == {}
    assert [m for m in store if "peft" in tops[m]] == []
