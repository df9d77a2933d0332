"""The import graph of the package: no cycles, and every layer imports only what lies below it.

Read statically from the source (every ``import`` / ``from ... import``, also those inside functions), so a
lazy import cannot hide an upward dependency. The package root (``cnncompress/__init__.py``) is exempt: it is
the one place that wires storage to models and methods.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "cnncompress"
PACKAGE = "cnncompress"

# What each part of the package may import (prefixes of module names); a part not listed may import anything
# except ``commands``/``cli``.
LEAVES = ("cnncompress.errors", "cnncompress.layers", "cnncompress.surgery", "cnncompress.timing")
ALLOWED = {
    "cnncompress.errors": (),
    "cnncompress.timing": (),
    "cnncompress.layers": (),
    "cnncompress.surgery": ("cnncompress.layers",),
    "cnncompress.kernels": ("cnncompress.kernels", "cnncompress.errors", "cnncompress.timing"),
    "cnncompress.storage": ("cnncompress.storage", "cnncompress.kernels", *LEAVES),
    "cnncompress.data": ("cnncompress.data", *LEAVES),
    "cnncompress.models": ("cnncompress.models", "cnncompress.data", *LEAVES),
}
FORBIDDEN = {  # parts that must not reach up into these
    "cnncompress.methods": ("cnncompress.experiments", "cnncompress.commands", "cnncompress.cli"),
    "cnncompress.experiments": ("cnncompress.commands", "cnncompress.cli"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    return (ROOT / relative).with_suffix(".py").is_file() or (ROOT / relative / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """The ``cnncompress`` modules that ``path`` imports (a name imported from a package counts as the
    sub-module when it is one, else as the package)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.add(candidate if _is_module(candidate) else source)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) - {_module_name(p)} for p in ROOT.rglob("*.py")}


def _part(module: str, table: dict) -> str | None:
    matches = [key for key in table if module == key or module.startswith(key + ".")]
    return max(matches, key=len) if matches else None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), the package root left out."""
    graph = {m: {d for d in deps if d in graph and d != PACKAGE} for m, deps in graph.items() if m != PACKAGE}
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def test_the_reader_sees_imports_inside_functions_and_relative_ones(tmp_path):
    graph = _graph()
    assert "cnncompress.layers" in graph["cnncompress.storage.architecture"]
    assert "cnncompress.models" in graph[PACKAGE] and "cnncompress.storage" in graph[PACKAGE]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_lower_layers_import_only_what_lies_below(part):
    upward = {module: sorted(d for d in deps if d != PACKAGE and _part(d, {p: 0 for p in ALLOWED[part]}) is None
                             and not (d == part or d.startswith(part + ".")))
              for module, deps in _graph().items() if _part(module, ALLOWED) == part}
    assert {m: d for m, d in upward.items() if d} == {}


def test_nothing_but_the_cli_imports_commands():
    offenders = {m: sorted(d for d in deps if d.startswith("cnncompress.commands"))
                 for m, deps in _graph().items()
                 if not (m.startswith("cnncompress.commands") or m == "cnncompress.cli")}
    assert {m: d for m, d in offenders.items() if d} == {}


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_methods_and_experiments_do_not_reach_up(part):
    offenders = {m: sorted(d for d in deps if _part(d, {f: 0 for f in FORBIDDEN[part]}))
                 for m, deps in _graph().items() if _part(m, FORBIDDEN) == part}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_modules_stay_small_and_hold_no_c_source():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 420} == {}
    with_c = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if "#include <" in p.read_text()]
    assert with_c == []
