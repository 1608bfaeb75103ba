"""Record a recipe's expected loss curve from real runs.

    .venv/bin/python -m tools.record_curve tiny            # two runs, writes recipes/tiny/expected_loss.json
    .venv/bin/python -m tools.record_curve llama32_1b --overlay cpu_scale            # -> expected_loss.cpu_scale.json
    .venv/bin/python -m tools.record_curve llama3_8b --overlay cpu_scale --nodes 2 resource_pool.device_resource=NPU
    .venv/bin/python -m tools.record_curve llama3_8b --nodes 2 --runs 1   # full scale, on the real cluster

With ``--nodes N`` > 1 it joins the cluster in ``RAY_ADDRESS``, or, when that is unset, starts a
simulated one on this machine (``tools/simulated_cluster.py``: N nodes of 8 CPUs and 8 "NPU").
A full-scale curve (no overlay) goes to ``expected_loss.json``; nothing is recorded that was not run.

Runs the recipe ``--runs`` times (default 2) with the same seed on this CPU's own kernels, then once
more under each ``--kernels`` setting of ``ATEN_CPU_CAPABILITY`` (default ``default,avx2``: PyTorch's
scalar and AVX2 kernels, which round fp32 differently from the AVX-512 or AVX2 kernels a machine picks
for itself; this is how another CPU is simulated on this one). It stores the first run's per-step
loss, every run's largest difference from it (``checked_in``: the environments the curve was checked
in), the tolerance derived from them, and the environment (library versions, CPU, git commit).
Refuses to record from a dirty git tree, so a curve always names the code that produced it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from common.run.expected_curve import curve_path
from common.run.outputs import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
# Floor of the per-step tolerance. Runs are bitwise repeatable on one machine, and sampling is keyed
# Gumbel-max (common/generate/sampling.py), so other kernels change losses only by fp32 rounding (measured
# spread: see each curve's checked_in); 1e-3 stays far below the curve's own movement and below
# what a real regression does (beta x 1.1, a shifted response mask, a swapped pair).
TOLERANCE_FLOOR = 1e-3
NOISE_MULTIPLIER = 10
DEFAULT_KERNELS = "default,avx2"


def environment() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {
        "python": platform.python_version(),
        "packages": {p: version(p) for p in ("torch", "megatron-core", "ray", "transformers", "numpy")},
        "cpu": cpu,
        "cpu_kernels": __import__("torch").backends.cpu.get_cpu_capability(),  # what ATen picks here (e.g. AVX512)
        "cores": __import__("os").cpu_count(),
        "git_commit": commit,
        "recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def launch_args(args: argparse.Namespace) -> list[str]:
    """The ``./run.sh`` arguments after the recipe name (without ``--out``)."""
    return [
        *(["--nodes", str(args.nodes)] if args.nodes > 1 else []),
        *(["--overlay", args.overlay] if args.overlay else []),
        *args.overrides,
    ]


def run_once(recipe: str, out: Path, launch: list[str], kernels: str | None = None) -> list[float]:
    """One run; ``kernels`` sets ATEN_CPU_CAPABILITY for it and its workers (None: this CPU's own)."""
    cmd = [str(ROOT / "run.sh"), recipe, "--out", str(out), *launch]
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if kernels is not None:
        env["ATEN_CPU_CAPABILITY"] = kernels
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)
    return [row["loss"] for row in read_jsonl(out / "metrics.jsonl")]


def max_diff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        raise SystemExit(f"record_curve: runs disagree on the step count ({len(a)} vs {len(b)}); nothing recorded")
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument(
        "--overlay",
        default=None,
        help="a recipe overlay (e.g. cpu_scale); the curve goes to expected_loss.<overlay>.json",
    )
    p.add_argument("--nodes", type=int, default=1, help="nodes; >1 without RAY_ADDRESS starts a simulated cluster here")
    p.add_argument(
        "--kernels",
        default=DEFAULT_KERNELS,
        help=f"comma-separated ATEN_CPU_CAPABILITY values, one extra run each (default {DEFAULT_KERNELS}; '' for none)",
    )
    p.add_argument("--allow-dirty", action="store_true", help="record from uncommitted code (not for committed curves)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args()  # options may come between the recipe and the overrides
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    ).stdout
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
        kernels = [k for k in args.kernels.split(",") if k]
        other = {k: run_once(args.recipe, Path(tmp) / f"kernels_{k}", launch, kernels=k) for k in kernels}
    cpu = environment()["cpu"]
    checked_in = [
        {
            "cpu": cpu,
            "ATEN_CPU_CAPABILITY": "(this CPU's own)",
            "runs": args.runs,
            "max_diff": max((max_diff(curves[0], c) for c in curves[1:]), default=0.0),
        }
    ]
    checked_in += [
        {"cpu": cpu, "ATEN_CPU_CAPABILITY": k, "runs": 1, "max_diff": max_diff(curves[0], c)} for k, c in other.items()
    ]
    noise = max(entry["max_diff"] for entry in checked_in)
    record = {
        "recipe": args.recipe,
        "command": " ".join(["./run.sh", args.recipe, *launch]),
        "cluster": f"{args.nodes} node(s)" + (" (simulated on one machine)" if args.nodes > 1 and simulated else ""),
        "steps": list(range(1, len(curves[0]) + 1)),
        "loss": curves[0],
        "runs": args.runs,
        "measured_noise": noise,
        "checked_in": checked_in,
        "tolerance": max(NOISE_MULTIPLIER * noise, TOLERANCE_FLOOR),
        "tolerance_rule": f"max({NOISE_MULTIPLIER} x the largest difference measured over runs and kernel settings, {TOLERANCE_FLOOR})",
        "environment": environment(),
    }
    out = curve_path(ROOT / "recipes" / args.recipe, args.overlay)
    out.write_text(json.dumps(record, indent=1) + "\n")
    spread = ", ".join(f"{e['ATEN_CPU_CAPABILITY']}: {e['max_diff']:.2g}" for e in checked_in)
    print(
        f"wrote {out}: {len(curves[0])} steps; largest difference per setting ({spread}); tolerance {record['tolerance']:.3g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
