"""Command line shared by every recipe's launch script:

    ./run.sh <recipe> [--nodes N] [--out DIR] [--overlay NAME] [--resume RUN_DIR] [--export-hf DIR] [key=value ...]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass
class Args:
    nodes: int
    out: str | None
    overlay: str | None
    resume: str | None
    overrides: list[str]
    export_hf: str | None = None


def parse_args(recipe: str, argv: list[str] | None = None) -> Args:
    p = argparse.ArgumentParser(
        prog=f"./run.sh {recipe}",
        description=f"Online DPO, recipe '{recipe}'. Overrides are dotted config keys, e.g. training.train_iters=5.",
    )
    p.add_argument("--nodes", type=int, default=1, help="Ray nodes the run spans (>1 joins the running cluster)")
    p.add_argument("--out", default=None, help="run folder (default: a new folder under runs/)")
    p.add_argument(
        "--overlay", default=None, metavar="NAME",
        help="a YAML of overrides merged over the frozen config: recipes/<recipe>/NAME.yaml or a file path (e.g. cpu_scale)",
    )
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument(
        "--export-hf", default=None, metavar="DIR",
        help="after the run, also write the trained actor (RUN_DIR/final) as a Hugging Face folder transformers loads",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value")
    ns = p.parse_intermixed_args(argv)  # options may come after overrides too
    if ns.nodes < 1:
        p.error("--nodes must be >= 1")
    if ns.resume and ns.out:
        p.error("--resume continues in its own run folder; drop --out")
    if ns.resume and ns.overlay:
        p.error("--resume continues with the stopped run's resolved config; drop --overlay")
    return Args(nodes=ns.nodes, out=ns.out, overlay=ns.overlay, resume=ns.resume, overrides=ns.overrides, export_hf=ns.export_hf)
