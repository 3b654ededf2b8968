"""The library's shape: sub-packages along the data flow that import only downstream-to-upstream, no import
cycle between modules (lazy imports inside functions included), and no module past the size where it stops
being one thing."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "muffin_lib"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("muffin_lib"):
            for alias in node.names:  # "from muffin_lib.training import loop" imports a module
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("muffin_lib"))
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph = {}
    for name, path in paths.items():
        edges = _imports(path, modules)
        # a package's __init__ re-exports its modules; importing a sub-module first runs its parents
        graph[name] = {e for e in edges if e != name and not name.startswith(e + ".") and e != "muffin_lib"}
    return graph


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == [], "import cycles (lazy imports count): " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_is_too_long():
    long = {p.relative_to(PACKAGE).as_posix(): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these modules along what they own: {long}"


# The data flow, upstream first. A module may import from its own layer and the layers before it; the
# top level (config, errors, files, pool, progress, results) is shared by all and imports none of them.
LAYERS = ("data", "training", "selection", "study")
ENTRY_POINTS = {"muffin_lib.cli", "muffin_lib.__main__"}  # they dispatch to every layer, lazily


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) + 1 if len(parts) > 1 and parts[1] in LAYERS else 0


def test_packages_import_only_upstream():
    wrong = [
        f"{name} -> {target}"
        for name, targets in _graph().items()
        if name not in ENTRY_POINTS
        for target in targets
        if _layer(target) > _layer(name)
    ]
    flow = "data -> training -> selection -> study"
    assert wrong == [], f"imports against the data flow ({flow}): " + "; ".join(wrong)


def test_every_layer_says_what_it_owns():
    for layer in LAYERS:
        init = PACKAGE / layer / "__init__.py"
        has_docstring = init.exists() and ast.get_docstring(ast.parse(init.read_text()))
        assert has_docstring, f"muffin_lib/{layer} needs a docstring"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_uses_another_modules_private_names():
    # `from muffin_lib.x import _name` and `module._name` on a module imported from muffin_lib: what is used
    # across modules is public (no underscore) and says what it is in a docstring.
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("muffin_lib"):
                wrong += [f"{path.name}: from {node.module} import {a.name}"
                          for a in node.names if _private(a.name)]
                modules.update(a.asname or a.name for a in node.names)
            elif isinstance(node, ast.Import):
                modules.update(a.asname or a.name.split(".")[0] for a in node.names
                               if a.name.startswith("muffin_lib"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                    and node.value.id in modules):
                wrong.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert wrong == [], "private names used across modules: " + "; ".join(sorted(wrong))
