"""Time of each phase of an iteration of a recipe (default `tiny`).

    .venv/bin/python bench/step_phases.py                     # tiny, 12 iterations
    .venv/bin/python bench/step_phases.py --recipe tiny --iters 20 actor_rollout_ref.actor_rollout.top_k=50

Runs the recipe through ``run.sh`` and reports, from its ``metrics.jsonl``, the median seconds per
phase over the iterations after the first two (warm-up), with each phase's share of the step.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common.run.outputs import read_jsonl

ROOT = Path(__file__).resolve().parents[1]

PHASES = ("sync", "generate", "reward", "reference", "train", "save")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="tiny")
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if args.iters < 3:
        p.error("--iters must be >= 3 (the first two are warm-up)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [
            str(ROOT / "run.sh"),
            args.recipe,
            "--out",
            str(out),
            f"training.train_iters={args.iters}",
            *args.overrides,
        ]
        subprocess.run(cmd, cwd=ROOT, check=True)
        rows = read_jsonl(out / "metrics.jsonl")[2:]
    phases = [ph for ph in PHASES if f"timing/{ph}" in rows[0]]
    for r in rows:  # bookkeeping between phases: pairing, decoding, logging
        r["timing/other"] = r["timing/step"] - sum(r[f"timing/{ph}"] for ph in phases)
    step = statistics.median(r["timing/step"] for r in rows)
    print(f"\n{args.recipe}: median over iterations 3-{args.iters}")
    print(f"{'phase':<12}{'seconds':>10}{'share':>9}")
    for phase in [*phases, "other"]:
        sec = statistics.median(r[f"timing/{phase}"] for r in rows)
        print(f"{phase:<12}{sec:>10.3f}{sec / step:>9.1%}")
    print(f"{'step':<12}{step:>10.3f}{1:>9.0%}   ({1 / step:.2f} it/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
