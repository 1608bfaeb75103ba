"""``./run.sh <recipe> ...``: Ray's processes start first, then the recipe's ``run.py`` runs.

A private Ray instance (one node, no ``RAY_ADDRESS``) takes ~3 s to start on 2 cores, mostly
waiting for its processes; the driver's own imports (torch, ~1.3 s) and checks take longer. Started
here, before anything imports torch, Ray's start overlaps both, and the session
(common/session.py) then starts the roles' processes on it as soon as it is up
(``common.ray_start.BackgroundRay``). The command line is checked first: ``--help`` or a bad
option starts nothing. ``python recipes/<recipe>/run.py ...`` still works, and starts Ray in the
session instead.
"""

from __future__ import annotations

import runpy
import sys

from common.cli import parse_args
from common.config import PROJECT_ROOT
from common.ray_start import start_early


def main(argv: list[str]) -> None:
    recipe, args = argv[0], argv[1:]
    script = PROJECT_ROOT / "recipes" / recipe / "run.py"
    start_early(parse_args(recipe, args).nodes)
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
