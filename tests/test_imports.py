"""The package structure stays a tree: `common` never imports `data` (data preparation builds on the
engine, not the reverse), and no module of `common`/`data` imports itself back through others, not
even through an import inside a function."""

import ast

from conftest import ROOT

PACKAGES = ("common", "data")


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of `common`/`data` it imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    paths = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    modules = {module_name(path) for path in paths}
    graph = {}
    for path in paths:
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                subs = [f"{node.module}.{a.name}" for a in node.names]
                names += [s for s in subs if s in modules] or [node.module]
            deps |= {n for n in names if n.split(".")[0] in PACKAGES}
        graph[module_name(path)] = deps
    return graph


def test_the_graph_sees_every_module():
    graph = import_graph()
    assert len([m for m in graph if m.startswith("common.")]) > 50  # every module of every package of common/
    assert "common.config.validate" in graph["common.config.load"]  # a plain `from common.config.validate import`


def test_common_does_not_import_data():
    graph = import_graph()
    assert not [(m, d) for m, deps in graph.items() for d in deps if m.startswith("common.") and d.startswith("data")]


def test_no_import_cycles():
    graph = import_graph()

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for dep in graph.get(start, ()):
            if dep == target or (dep not in seen and reaches(dep, target, seen | {dep})):
                return True
        return False

    assert [m for m in graph if reaches(m, m, {m})] == []
