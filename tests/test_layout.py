"""The package's architecture (issue 26): layers as subpackages, no import circles, no upward imports.

The import graph is read from the source (``ast``: every ``import`` and ``from ... import``, at module level and
inside functions, where the circles of the past hid), so a test fails before a circle can bite at run time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import proxyscale

SRC = Path(proxyscale.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if level:
        base = base[: len(base) - (level - 1)]
        return ".".join([*base, *([module] if module else [])])
    return module or ""


def imports(name: str) -> set[str]:
    """The proxyscale modules ``name`` imports (a ``from pkg import sub`` counts as the submodule ``pkg.sub``)."""
    path = MODULES[name]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("proxyscale")}
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, path.name == "__init__.py", node.level, node.module)
            if not target.startswith("proxyscale"):
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & MODULES.keys()
            out |= subs or {target}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            pass  # proxyscale.__getattr__'s lazy public names: resolved below from _PUBLIC
    if name == "proxyscale":
        out |= {module for module, _ in proxyscale._PUBLIC.values()}
    return {m for m in out if m in MODULES and m != name}


GRAPH = {name: imports(name) for name in MODULES}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] not in ("__main__",) else None


def test_every_module_is_in_a_layer_and_each_layer_says_what_it_may_import():
    top = sorted(p.stem for p in SRC.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert top == ["cli"], f"a module outside the layers: {top} (put it in a subpackage of proxyscale.LAYERS)"
    packages = sorted(p.parent.name for p in SRC.glob("*/__init__.py"))
    assert packages == sorted(set(proxyscale.LAYERS) - {"cli"})
    for package in packages:
        doc = ast.get_docstring(ast.parse((SRC / package / "__init__.py").read_text())) or ""
        assert "May import" in doc, f"proxyscale.{package}'s docstring must say what it may import"


def test_no_upward_imports():
    upward = []
    for module, targets in GRAPH.items():
        layer = _layer(module)
        if layer is None:  # proxyscale itself and __main__: the entry points may import anything
            continue
        allowed = {layer, *proxyscale.LAYERS[layer]}
        upward += [f"{module} -> {t}" for t in targets if _layer(t) not in allowed]
    assert not upward, "imports against proxyscale.LAYERS: " + "; ".join(sorted(upward))


def test_no_import_circles():
    """Depth-first search for a back edge over every module, package ``__init__`` files included."""
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)
    assert not circles, "import circles: " + "; ".join(circles)


@pytest.mark.parametrize("graph, circle", [({"a": {"b"}, "b": {"a"}}, True), ({"a": {"b"}, "b": set()}, False)])
def test_the_circle_search_finds_a_planted_circle(graph, circle):
    """The check can fail: a two-module circle planted in place of the graph is found; a chain is not."""
    globals_graph = dict(GRAPH)
    try:
        GRAPH.clear()
        GRAPH.update(graph)
        if circle:
            with pytest.raises(AssertionError, match="a -> b -> a"):
                test_no_import_circles()
        else:
            test_no_import_circles()
    finally:
        GRAPH.clear()
        GRAPH.update(globals_graph)


def test_the_public_names_keep_working():
    """What users type (README, docs): the monitor, its framework adapters, train_group, forecast, analysis."""
    from proxyscale import monitor

    assert callable(monitor.attach) and callable(monitor.trainer_callback) and callable(monitor.lightning_callback)
    assert proxyscale.train_group.__module__ == "proxyscale.engine.train"
    assert callable(proxyscale.forecast.run) and callable(proxyscale.analysis.lr_sensitivity)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        proxyscale.nope  # noqa: B018
