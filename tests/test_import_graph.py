"""The packages of `common/` and the imports between them, from the source alone (`ast`; nothing is imported).

`common/` holds only packages (and its own `__init__.py`); each package's `__init__.py` opens with a
two-line docstring: one line saying what the package is, a blank line, then `May import: ...`, the
packages of `common` its modules may import (`common.a, common.b.`, `nothing from common.`,
`every package.` or `every package but common.a, common.b.`). Every import statement counts, those
inside functions too: (a) none names a package its package may not import, (b) the packages import
one another without a cycle. The checker runs on the real tree, and on small made-up trees that break
each rule (it finds what it should)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

COMMON = ROOT / "common"
PREFIX = "May import: "


def packages(common: Path) -> list[str]:
    return sorted(p.name for p in common.iterdir() if p.is_dir() and (p / "__init__.py").is_file())


def layout_problems(common: Path) -> list[str]:
    """(c) Anything in `common/` but packages and `__init__.py` (what `ls` shows: no dot files; no `__pycache__`)."""
    strays = []
    for p in sorted(common.iterdir()):
        if p.name.startswith(".") or p.name == "__pycache__" or p.name == "__init__.py":
            continue
        if not (p.is_dir() and (p / "__init__.py").is_file()):
            strays.append(f"common/{p.name}{'/' if p.is_dir() else ''}: not a package (modules live in a package)")
    return strays


def may_import(common: Path, package: str) -> tuple[set[str] | None, list[str]]:
    """(d) The packages ``package`` may import, from its docstring, and the problems with that docstring."""
    init = common / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text()), clean=False)
    lines = (doc or "").split("\n")
    where = f"common/{package}/__init__.py"
    if len(lines) != 3 or not lines[0].strip() or lines[1] != "" or not lines[2].startswith(PREFIX):
        return None, [f"{where}: the docstring must be two lines, what the package is, a blank line, '{PREFIX}...'"]
    rule = lines[2][len(PREFIX) :]
    if not rule.endswith("."):
        return None, [f"{where}: '{lines[2]}' must end with a full stop"]
    rule, others = rule[:-1], set(packages(common)) - {package}
    if rule == "nothing from common":
        return set(), []
    if rule == "every package":
        return others, []
    named_text = rule.removeprefix("every package but ")
    named = [n.strip() for n in named_text.split(",")]
    unknown = [n for n in named if not n.startswith("common.") or n.removeprefix("common.") not in others]
    if unknown:
        return None, [f"{where}: '{n}' in '{lines[2]}' is not a package of common" for n in unknown]
    names = {n.removeprefix("common.") for n in named}
    return (others - names if rule.startswith("every package but ") else names), []


def imported_modules(path: Path, module: str) -> list[tuple[str, int]]:
    """Every module an import statement of ``path`` (the module named ``module``) names, with its line;
    statements inside functions and classes too, relative ones resolved."""
    is_init = path.name == "__init__.py"
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from ..a import b: relative to this module's package
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_init else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from common import run` imports the package common.run; `from common.run import x`, common.run
            names += (
                [(f"{base}.{a.name}", node.lineno) for a in node.names] if base == "common" else [(base, node.lineno)]
            )
    return names


def import_graph(common: Path) -> dict[str, dict[str, list[str]]]:
    """package -> {package it imports: ['common/<file>:<line>', ...]} (imports of its own modules left out)."""
    graph = {}
    for package in packages(common):
        edges = {}
        for path in sorted((common / package).rglob("*.py")):
            rel = path.relative_to(common.parent)
            module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            for name, line in imported_modules(path, module):
                parts = name.split(".")
                if parts[0] == "common" and len(parts) > 1 and parts[1] != package:
                    edges.setdefault(parts[1], []).append(f"{rel}:{line}")
        graph[package] = edges
    return graph


def find_cycle(graph: dict[str, dict]) -> list[str] | None:
    """(b) One cycle between packages (``[a, b, ..., a]``), or None."""
    done, stack = set(), []  # stack: the packages on the path being followed

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        for dep in sorted(graph.get(node, {})):
            if dep in stack:
                return stack[stack.index(dep) :] + [dep]
            if dep not in done and (cycle := visit(dep)):
                return cycle
        done.add(stack.pop())
        return None

    for node in sorted(graph):
        if node not in done and (cycle := visit(node)):
            return cycle
    return None


def problems(common: Path) -> list[str]:
    """Everything wrong with ``common``'s layout and imports; [] when the rules hold."""
    found = layout_problems(common)
    graph = import_graph(common)
    for package in packages(common):
        allowed, doc_problems = may_import(common, package)
        found += doc_problems
        if allowed is None:
            continue
        for dep, sites in sorted(graph[package].items()):
            if dep not in allowed:
                found.append(f"common.{package} imports common.{dep}, not in its 'May import' ({', '.join(sites)})")
    cycle = find_cycle(graph)
    if cycle:
        found.append("import cycle between packages: " + " -> ".join(f"common.{p}" for p in cycle))
    return found


def test_common_packages_import_only_what_they_declare():
    assert len(packages(COMMON)) >= 10  # the tree read is the real one
    assert problems(COMMON) == []


# ---------------------------------------------------------------------------------- the checker can fail


def _package(common: Path, name: str, rule: str, **modules: str) -> None:
    (common / name).mkdir(parents=True)
    (common / name / "__init__.py").write_text(f'"""The {name} package.\n\n{PREFIX}{rule}"""\n')
    for module, source in modules.items():
        (common / name / f"{module}.py").write_text(source)


@pytest.fixture
def fake(tmp_path) -> Path:
    """A tree that keeps every rule: common.util (imports nothing), common.a (may import common.util)."""
    common = tmp_path / "common"
    common.mkdir()
    (common / "__init__.py").write_text('"""The root."""\n')
    _package(common, "util", "nothing from common.", helpers="import json\n")
    _package(common, "a", "common.util.", m="from common.util import helpers\n")
    assert problems(common) == []
    return common


def test_checker_finds_a_forbidden_import_inside_a_function(fake):
    (fake / "util" / "late.py").write_text("def f():\n    from common.a.m import x\n    return x\n")
    assert problems(fake) == [
        "common.util imports common.a, not in its 'May import' (common/util/late.py:2)",
        "import cycle between packages: common.a -> common.util -> common.a",
    ]


@pytest.mark.parametrize(
    "statement",
    [
        "import common.b.x",
        "from common import b",
        "from common.b import x",
        "from ..b import x",
        "import common.b as b",
    ],
)
def test_checker_reads_every_form_of_import(fake, statement):
    _package(fake, "b", "nothing from common.", x="X = 1\n")
    (fake / "a" / "n.py").write_text(statement + "\n")
    assert problems(fake) == ["common.a imports common.b, not in its 'May import' (common/a/n.py:1)"]


def test_checker_finds_a_cycle_the_rules_allow(fake):
    _package(fake, "b", "every package.", x="from common.c import y\n")
    _package(fake, "c", "every package but common.util.", y="import common.b.x\n")
    assert problems(fake) == ["import cycle between packages: common.b -> common.c -> common.b"]


def test_checker_reads_every_package_but(fake):
    _package(fake, "b", "every package but common.a.", x="import common.util.helpers\nimport common.a.m\n")
    assert problems(fake) == ["common.b imports common.a, not in its 'May import' (common/b/x.py:2)"]


def test_checker_finds_a_module_outside_the_packages(fake):
    (fake / "loose.py").write_text("")
    (fake / "data").mkdir()  # a folder without __init__.py
    assert problems(fake) == [
        "common/data/: not a package (modules live in a package)",
        "common/loose.py: not a package (modules live in a package)",
    ]


@pytest.mark.parametrize(
    "init",
    [
        "",  # no docstring
        '"""The a package."""\n',  # no rule
        '"""The a package.\nMay import: common.util."""\n',  # no blank line
        '"""The a package.\n\nMay import: common.util."""\n"""more"""\n',  # fine: a second string is no docstring
        '"""The a package.\n\nMay import: common.util"""\n',  # no full stop
        '"""The a package.\n\nMay import: common.nope."""\n',  # no such package
    ],
)
def test_checker_finds_a_bad_docstring(fake, init):
    (fake / "a" / "__init__.py").write_text(init)
    found = problems(fake)
    if '"""more"""' in init:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith("common/a/__init__.py: "), found
