"""The import graph of the package: no cycles, and every layer imports only what lies below it.

Read statically from the source: every ``import`` / ``from ... import``, also those inside functions (a lazy import
cannot hide an upward dependency), and the package ``__init__`` each import runs first (importing
``cnncompress.deploy.int8`` runs ``cnncompress/deploy/__init__.py``: an edge to ``cnncompress.deploy``). The
package root (``cnncompress/__init__.py``) is exempt: every module is inside it, and it is the one place that wires
storage and the int8 method to the layers above them at run time.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "cnncompress"
PACKAGE = "cnncompress"

# The layers, bottom up: each may import its own part and the parts listed (prefixes of module names).
BOTTOM = ("cnncompress.errors", "cnncompress.hardware", "cnncompress.timing", "cnncompress.model_card")
CORE = (*BOTTOM, "cnncompress.kernels", "cnncompress.layers", "cnncompress.surgery")
BELOW_METHODS = (*CORE, "cnncompress.storage", "cnncompress.data", "cnncompress.models")
BELOW_TRAINING = (*BELOW_METHODS, "cnncompress.methods", "cnncompress.deploy", "cnncompress.measure")
ALLOWED = {
    "cnncompress.errors": (), "cnncompress.hardware": (), "cnncompress.timing": (), "cnncompress.model_card": (),
    "cnncompress.kernels": BOTTOM,
    "cnncompress.layers": (),
    "cnncompress.surgery": ("cnncompress.layers",),
    "cnncompress.storage": CORE,
    "cnncompress.data": CORE,
    "cnncompress.models": (*CORE, "cnncompress.storage", "cnncompress.data"),
    "cnncompress.methods": BELOW_METHODS,
    "cnncompress.deploy": (*BELOW_METHODS, "cnncompress.methods"),
    "cnncompress.measure": (*BELOW_METHODS, "cnncompress.methods", "cnncompress.deploy"),
    "cnncompress.training": BELOW_TRAINING,
    "cnncompress.pipeline": (*BELOW_TRAINING, "cnncompress.training"),
    "cnncompress.budget": (*BELOW_TRAINING, "cnncompress.training"),
    "cnncompress.app": (*BELOW_TRAINING, "cnncompress.training"),
    "cnncompress.experiments": (*BELOW_TRAINING, "cnncompress.training", "cnncompress.pipeline", "cnncompress.budget",
                                "cnncompress.app"),
}
RUNTIMES = ("onnxruntime", "openvino")  # only deploy (and what lies above it) may import these


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
    return found | {parent for module in found for parent in _parents(module)}


def _parents(module: str) -> list[str]:
    """The packages whose ``__init__`` importing ``module`` runs first (the root left out)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _third_party(path: Path) -> set[str]:
    """Top-level names of the non-package modules ``path`` imports (anywhere in it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found - {PACKAGE}


def _graph() -> dict[str, set[str]]:
    """Module -> the modules it imports. A module's own enclosing packages are left out: Python has begun running
    their ``__init__`` before the module itself, so such an edge never waits on anything."""
    graph = {}
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        graph[name] = _imports(path) - {name} - set(_parents(name))
    return graph


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


def test_every_module_belongs_to_a_layer():
    unplaced = sorted(m for m in _graph() if m != PACKAGE and _part(m, ALLOWED) is None
                      and not (m == "cnncompress.cli" or m.startswith("cnncompress.commands")))
    assert unplaced == []


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_layer_imports_only_what_lies_below(part):
    upward = {module: sorted(d for d in deps if d != PACKAGE and _part(d, {p: 0 for p in ALLOWED[part]}) is None
                             and not (d == part or d.startswith(part + ".")))
              for module, deps in _graph().items() if _part(module, ALLOWED) == part}
    assert {m: d for m, d in upward.items() if d} == {}


def test_the_reader_counts_package_inits():
    assert "cnncompress.deploy" in _graph()["cnncompress.budget.latency_model"]  # it imports cnncompress.deploy.*


def test_nothing_but_the_cli_imports_commands():
    offenders = {m: sorted(d for d in deps if d.startswith("cnncompress.commands"))
                 for m, deps in _graph().items()
                 if not (m.startswith("cnncompress.commands") or m == "cnncompress.cli")}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_only_deploy_and_above_import_a_runtime():
    below = [p for p in ROOT.rglob("*.py") if _part(_module_name(p), ALLOWED) in
             (*BELOW_METHODS, "cnncompress.methods")]
    offenders = {_module_name(p): sorted(_third_party(p) & set(RUNTIMES)) for p in below}
    assert {m: r for m, r in offenders.items() if r} == {}


def test_one_reader_of_cpuinfo():
    readers = sorted(_module_name(p) for p in ROOT.rglob("*.py") if "/proc/cpuinfo" in p.read_text()
                     and 'Path("/proc/cpuinfo")' in p.read_text())
    assert readers == ["cnncompress.hardware"]


def test_top_level_stays_small():
    modules = sorted(p.stem for p in ROOT.glob("*.py") if p.stem not in ("__init__", "cli"))
    assert len(modules) <= 12, modules


def test_modules_stay_small_and_hold_no_c_source():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 420} == {}
    with_c = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if "#include <" in p.read_text()]
    assert with_c == []


def test_a_model_card_is_carried_by_one_function():
    """No hand-written loop copies spec / metadata / compression_history onto a wrapper: ``model_card.carry`` does."""
    loops = sorted(_module_name(p) for p in ROOT.rglob("*.py") if p.name != "model_card.py"
                   and '"compression_history")' in p.read_text() and "for attribute in" in p.read_text())
    assert loops == []
