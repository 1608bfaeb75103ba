"""Command line shared by every recipe's launch script:

./run.sh <recipe> [--nodes N] [--out DIR] [--overlay NAME] [--resume RUN_DIR] [--export-hf DIR] [key=value ...]

``./run.sh --help`` (``build_parser()``) lists the recipes and the options; ``./run.sh <recipe> --help``
the same for that recipe.
"""

from __future__ import annotations

import argparse
import ast
import re
from dataclasses import dataclass

from common.config.load import PROJECT_ROOT


@dataclass
class Args:
    nodes: int
    out: str | None
    overlay: str | None
    resume: str | None
    overrides: list[str]
    export_hf: str | None = None


def recipes() -> dict[str, str]:
    """Each recipe (a folder of recipes/ with a run.py) and the first line of its run.py's docstring."""
    found = {}
    for script in sorted((PROJECT_ROOT / "recipes").glob("*/run.py")):
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
        found[script.parent.name] = re.sub(r"^Online DPO, `[^`]*` recipe: ", "", doc.partition("\n")[0])
    return found


def build_parser(recipe: str | None = None) -> argparse.ArgumentParser:
    """The command line of ``./run.sh <recipe>``; without ``recipe`` (``./run.sh --help``) its help
    also lists the recipes."""
    if recipe:
        description, epilog = f"Online DPO, recipe '{recipe}'.", None
    else:
        listed = recipes()
        width = max(map(len, listed), default=0)
        description = "Online DPO: runs recipes/<recipe>/run.py (Ray's processes start first)."
        epilog = "recipes:\n" + "\n".join(f"  {name:<{width}}  {line}" for name, line in listed.items())
    p = argparse.ArgumentParser(
        prog=f"./run.sh {recipe or '<recipe>'}",
        description=description + "\nOverrides are dotted config keys, e.g. training.train_iters=5.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--nodes", type=int, default=1, metavar="N", help="Ray nodes the run spans (>1 joins the running cluster)"
    )
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default: a new folder under runs/)")
    p.add_argument(
        "--overlay",
        default=None,
        metavar="NAME",
        help="a YAML of overrides merged over the frozen config: recipes/<recipe>/NAME.yaml or a file path (e.g. cpu_scale)",
    )
    p.add_argument(
        "--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint"
    )
    p.add_argument(
        "--export-hf",
        default=None,
        metavar="DIR",
        help="after the run, also write the trained actor (RUN_DIR/final) as a Hugging Face folder transformers loads",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. training.train_iters=5")
    return p


def parse_args(recipe: str, argv: list[str] | None = None) -> Args:
    p = build_parser(recipe)
    ns = p.parse_intermixed_args(argv)  # options may come after overrides too
    if ns.nodes < 1:
        p.error("--nodes must be >= 1")
    if ns.resume and ns.out:
        p.error("--resume continues in its own run folder; drop --out")
    if ns.resume and ns.overlay:
        p.error("--resume continues with the stopped run's resolved config; drop --overlay")
    return Args(
        nodes=ns.nodes, out=ns.out, overlay=ns.overlay, resume=ns.resume, overrides=ns.overrides, export_hf=ns.export_hf
    )
