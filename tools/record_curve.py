"""Record a recipe's expected loss curve from real runs.

    .venv/bin/python -m tools.record_curve tiny            # two runs, writes recipes/tiny/expected_loss.json
    .venv/bin/python -m tools.record_curve llama32_1b --overlay cpu_scale            # -> expected_loss.cpu_scale.json
    .venv/bin/python -m tools.record_curve llama3_8b --overlay cpu_scale --nodes 2 resource_pool.device_resource=NPU
    .venv/bin/python -m tools.record_curve llama3_8b --nodes 2 --runs 1   # full scale, on the real cluster

With ``--nodes N`` > 1 it joins the cluster in ``RAY_ADDRESS``, or, when that is unset, starts a
simulated one on this machine (``tools/simulated_cluster.py``: N nodes of 8 CPUs and 8 "NPU").
A full-scale curve (no overlay) goes to ``expected_loss.json``; nothing is recorded that was not run.

Runs the recipe ``--runs`` times (default 2) with the same seed, stores the first run's per-step
loss, the largest run-to-run difference it measured, the tolerance derived from it, and the
environment (library versions, CPU, git commit). Refuses to record from a dirty git tree, so a
curve always names the code that produced it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import json
import platform
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from common.expected_curve import curve_path
from common.outputs import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
# Floor of the per-step tolerance: runs here are bitwise repeatable on one machine (noise 0), but
# another CPU model may round matmuls differently; 1e-3 keeps the check far tighter than the
# curve's own step-to-step movement while allowing last-digit drift.
TOLERANCE_FLOOR = 1e-3
NOISE_MULTIPLIER = 10


def environment() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {
        "python": platform.python_version(),
        "packages": {p: version(p) for p in ("torch", "megatron-core", "ray", "transformers", "numpy")},
        "cpu": cpu,
        "cores": __import__("os").cpu_count(),
        "git_commit": commit,
        "recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def launch_args(args: argparse.Namespace) -> list[str]:
    """The ``./run.sh`` arguments after the recipe name (without ``--out``)."""
    return [*(["--nodes", str(args.nodes)] if args.nodes > 1 else []), *(["--overlay", args.overlay] if args.overlay else []), *args.overrides]


def run_once(recipe: str, out: Path, launch: list[str]) -> list[float]:
    cmd = [str(ROOT / "run.sh"), recipe, "--out", str(out), *launch]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return [row["loss"] for row in read_jsonl(out / "metrics.jsonl")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--overlay", default=None, help="a recipe overlay (e.g. cpu_scale); the curve goes to expected_loss.<overlay>.json")
    p.add_argument("--nodes", type=int, default=1, help="nodes; >1 without RAY_ADDRESS starts a simulated cluster here")
    p.add_argument("--allow-dirty", action="store_true", help="record from uncommitted code (not for committed curves)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args()  # options may come between the recipe and the overrides
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout
    if dirty.strip() and not args.allow_dirty:
        print(f"refusing to record from a dirty tree; commit first:\n{dirty}", file=sys.stderr)
        return 2
    launch = launch_args(args)
    simulated = args.nodes > 1 and "RAY_ADDRESS" not in os.environ
    with contextlib.ExitStack() as stack:
        if simulated:
            from tools.simulated_cluster import simulated_cluster

            os.environ["RAY_ADDRESS"] = stack.enter_context(simulated_cluster(args.nodes))
            print(f"simulated {args.nodes}-node cluster at {os.environ['RAY_ADDRESS']}", flush=True)
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        curves = [run_once(args.recipe, Path(tmp) / f"run{k}", launch) for k in range(args.runs)]
    noise = max((abs(a - b) for c in curves[1:] for a, b in zip(curves[0], c)), default=0.0)
    record = {
        "recipe": args.recipe,
        "command": " ".join(["./run.sh", args.recipe, *launch]),
        "cluster": f"{args.nodes} node(s)" + (" (simulated on one machine)" if args.nodes > 1 and simulated else ""),
        "steps": list(range(1, len(curves[0]) + 1)),
        "loss": curves[0],
        "runs": args.runs,
        "measured_noise": noise,
        "tolerance": max(NOISE_MULTIPLIER * noise, TOLERANCE_FLOOR),
        "tolerance_rule": f"max({NOISE_MULTIPLIER} x measured run-to-run noise, {TOLERANCE_FLOOR})",
        "environment": environment(),
    }
    out = curve_path(ROOT / "recipes" / args.recipe, args.overlay)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}: {len(curves[0])} steps, run-to-run noise {noise:.3g}, tolerance {record['tolerance']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
