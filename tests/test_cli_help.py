"""`./run.sh --help` (and `-h`) lists the recipes and every option of the command line, exits 0 and
imports nothing of Ray; `./run.sh` without a recipe or with an unknown one prints the usage and exits 2."""

import subprocess
import sys

import pytest
from conftest import ROOT

from common.run.cli import build_parser, recipes

RECIPES = sorted(p.parent.name for p in (ROOT / "recipes").glob("*/run.py"))
OPTIONS = ["--nodes N", "--out DIR", "--overlay NAME", "--resume RUN_DIR", "--export-hf DIR", "key=value"]


def run_sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "run.sh"), *args], capture_output=True, text=True, timeout=60)


def test_recipes_are_those_with_a_run_py():
    assert RECIPES and list(recipes()) == RECIPES
    assert recipes()["tiny"]  # the first line of its docstring


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_recipes_and_options(flag):
    proc = run_sh(flag)
    assert proc.returncode == 0, proc.stderr
    help_text = proc.stdout
    assert help_text.startswith("usage: ./run.sh <recipe>")
    for name in RECIPES:
        assert f"\n  {name} " in help_text, name
    for option in OPTIONS + [action.option_strings[-1] for action in build_parser()._actions if action.option_strings]:
        assert option in help_text, option


def test_help_imports_nothing_of_ray():
    code = (
        "import runpy, sys\n"
        "sys.argv = ['launch', '--help']\n"
        "try:\n"
        "    runpy.run_module('common.run.launch', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print('ray' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("args", [(), ("nosuchrecipe",)], ids=["no_recipe", "unknown_recipe"])
def test_without_a_known_recipe_prints_the_usage_and_exits_2(args):
    proc = run_sh(*args)
    assert proc.returncode == 2
    usage = proc.stderr.splitlines()[0]
    assert usage.startswith("usage: ./run.sh <recipe>")
    for option in OPTIONS:
        assert option in usage, option
    assert " ".join(RECIPES) in proc.stderr
    assert ("unknown recipe 'nosuchrecipe'" in proc.stderr) == bool(args)
