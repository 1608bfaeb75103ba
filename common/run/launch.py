"""``./run.sh <recipe> ...``: Ray's processes start first, then the recipe's ``run.py`` runs.

A private Ray instance (one node, no ``RAY_ADDRESS``) takes ~3 s to start on 2 cores, mostly
waiting for its processes; the driver's own imports (torch, ~1.3 s) and checks take longer. Started
here, before anything imports torch, Ray's start overlaps both, and the session
(common/run/session.py) then starts the roles' processes on it as soon as it is up
(``common.cluster.ray_start.BackgroundRay``). The command line is checked first: ``--help`` (with
a recipe or without: ``./run.sh --help`` lists the recipes), no recipe, an unknown recipe or a bad
option imports nothing of Ray and starts nothing. ``python recipes/<recipe>/run.py ...`` still works,
and starts Ray in the session instead.
"""

from __future__ import annotations

import runpy
import sys

from common.config.load import PROJECT_ROOT
from common.run.cli import build_parser, parse_args, recipes
from common.run.stop_signals import process_signals


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-"):  # --help, -h; an option where the recipe goes
        if argv and argv[0] in ("-h", "--help"):
            build_parser().print_help()
            sys.exit(0)
        build_parser().error("the first argument is the recipe" if argv else "which recipe? (--help lists them)")
    recipe, args = argv[0], argv[1:]
    script = PROJECT_ROOT / "recipes" / recipe / "run.py"
    if "/" in recipe or not script.is_file():
        build_parser().error(f"unknown recipe {recipe!r}; recipes: {' '.join(recipes())}")
    nodes = parse_args(recipe, args).nodes  # --help or a bad option: exits here, before Ray
    process_signals()  # from here SIGTERM/SIGINT end the start-up at once, with 143 / 130 (common/run/stop_signals.py)
    from common.cluster.ray_start import start_early  # imports Ray (~1 s): only for a run

    start_early(nodes)
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
