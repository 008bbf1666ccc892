"""The import graph of ``mtbench``: no cycles, and every package imports only along the data flow
(batch -> trunk -> representation -> heads -> losses -> combiner -> gradients -> optimizer ->
metrics -> results -> table). Every import counts, those inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mtbench"

#: the layers, in the order of the flow: a module may import its own layer and the ones before it
LAYERS = {
    "base": (
        "mtbench.errors",
        "mtbench.files",
        "mtbench.options",
        "mtbench.metrics",
        "mtbench.pretrained",
        "mtbench.variant",
    ),
    "data": ("mtbench.data",),
    "models": ("mtbench.models",),
    "combiners": ("mtbench.combiners",),
    # the combiners outside mtbench's trainer: GradDrop as a layer, any combiner in your own loop
    "api": ("mtbench", "mtbench.nn", "mtbench.api"),
    "train": ("mtbench.train",),
    "report": ("mtbench.report",),
    "cli": (
        "mtbench.cli",
        "mtbench.cli_argv",
        "mtbench.cli_config",
        "mtbench.cli_folders",
        "mtbench.__main__",
        "mtbench.overrides",
        "mtbench.sweep_order",
        "mtbench.configs",
    ),
}
ORDER = list(LAYERS)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The mtbench modules that the module ``name`` (file ``path``) imports, anywhere in it.
    ``from a.b import c`` imports the module ``a.b.c`` when there is one, else ``a.b``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m == "mtbench" or m.startswith("mtbench.")}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: {m for m in imports(path, name, known) if m != name} for name, path in mods.items()}


def layer(module: str) -> str:
    best = None
    for name, prefixes in LAYERS.items():
        for p in prefixes:
            if module == p or (p != "mtbench" and module.startswith(p + ".")):
                if best is None or len(p) > best[1]:
                    best = (name, len(p))
    assert best is not None, f"{module} belongs to no layer of tests/test_imports.py"
    return best[0]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_graph_sees_function_level_imports():
    edges = graph()
    assert "mtbench.report.plots" in edges["mtbench.report.table"]  # imported inside report()
    assert "mtbench.data.shapes40" in edges["mtbench.data"]  # inside the task builders


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_packages_import_along_the_flow():
    wrong = []
    for module, targets in sorted(graph().items()):
        here = ORDER.index(layer(module))
        for target in sorted(targets):
            if ORDER.index(layer(target)) > here:
                wrong.append(f"{module} ({layer(module)}) imports {target} ({layer(target)})")
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
