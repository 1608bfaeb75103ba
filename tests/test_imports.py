"""The package structure stays a tree: `common` never imports `data` (data preparation builds on the
engine, not the reverse), and no module of `common`/`data` imports itself back through others, not
even through an import inside a function."""

import ast

from conftest import ROOT

PACKAGES = ("common", "data")


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            deps = set()
            for node in ast.walk(ast.parse(path.read_text())):
                names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
                deps |= {n for n in names if n.split(".")[0] in PACKAGES}
            graph[f"{package}.{path.stem}"] = deps
    return graph


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
