"""One step off-policy against on-policy, side by side in one call, same machine, same resources.

    .venv/bin/python -m bench.staleness                         # tiny, 12 iterations each -> docs/staleness/
    .venv/bin/python -m bench.staleness --recipe smollm2_135m --iters 10 --out runs/staleness_bench

Three runs of the recipe, one after the other:
- ``colocated``: the training ranks sample (the recipe's own placement): the best sequential layout;
- ``staleness0``: one dedicated generating rank beside the training ranks, generate-then-train;
- ``staleness1``: the same ranks, sampling iteration k+1 while iteration k trains (docs/cluster.md).
For each: wall seconds of the whole command, and over iterations 3-N the median and total seconds per
iteration and per phase (the sampling's own length on the generating ranks, and what the iteration
waited for it). Writes ``staleness.json``, ``staleness.md`` (the table) and ``timeline.png`` (the
staleness-1 run's phases over wall time) to ``--out``. Nothing is asserted: it reports what comes out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.commit import git_commit
from common.run.outputs import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
# one generating rank (TP 1) beside the training ranks; the actor pool grows by that one rank
GENERATORS = {
    "tiny": ("resource_pool.actor_rollout=3", "actor_rollout_ref.actor_rollout.generate_devices=1",
             "actor_rollout_ref.actor_rollout.generate_tensor_model_parallel_size=1"),
    "smollm2_135m": ("resource_pool.actor_rollout=2", "actor_rollout_ref.actor_rollout.generate_devices=1"),
}  # fmt: skip
PHASES = ("generate", "wait_generate", "sync", "reward", "reference", "train", "save", "step")


def configs(recipe: str) -> dict[str, tuple[str, ...]]:
    gen = GENERATORS[recipe]
    return {
        "colocated": (),
        "staleness0": (*gen, "actor_rollout_ref.actor_rollout.staleness=0"),
        "staleness1": (*gen, "actor_rollout_ref.actor_rollout.staleness=1"),
    }


def summary(rows: list[dict]) -> dict:
    steady = rows[2:]  # iterations 3-N: the first two warm up (compilation, caches, the first weight copy)
    out = {"iterations": [steady[0]["step"], steady[-1]["step"]]}
    for phase in PHASES:
        values = [r[f"timing/{phase}"] for r in steady if f"timing/{phase}" in r]
        if values:
            out[phase] = {"median": statistics.median(values), "total": sum(values)}
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def table(results: dict) -> str:
    lines = [
        "| run | wall s | s/iteration (median, 3-N) | total 3-N s | generate (own) | waited for it | reward | reference | train |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = results["staleness0"]["steady"]["step"]["total"]
    for name, r in results.items():
        s = r["steady"]

        def med(phase: str, s: dict = s) -> str:
            return f"{s[phase]['median']:.2f}" if phase in s else "-"

        ratio = base / s["step"]["total"]
        lines.append(
            f"| {name} | {r['wall_s']:.0f} | {s['step']['median']:.2f} | {s['step']['total']:.1f} ({ratio:.2f}x staleness0) "
            f"| {med('generate')} | {med('wait_generate')} | {med('reward')} | {med('reference')} | {med('train')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.staleness", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="tiny", choices=sorted(GENERATORS))
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--out", default="docs/staleness", help="folder for staleness.json, staleness.md, timeline.png")
    args = p.parse_args(argv)
    if args.iters < 4:
        p.error("--iters must be >= 4 (iterations 1-2 are warm-up)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    git = git_commit()
    commit, dirty = git["commit"] or "unknown", git["dirty"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in configs(args.recipe).items():
            run_dir = Path(tmp) / name
            cmd = [str(ROOT / "run.sh"), args.recipe, "--out", str(run_dir), f"training.train_iters={args.iters}",
                   "training.save_interval=0", *overrides]  # fmt: skip
            print(f"{name}: {' '.join(cmd[1:])}", flush=True)
            start = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            results[name] = {
                "command": cmd[1:],
                "wall_s": wall,
                "steady": summary(read_jsonl(run_dir / "metrics.jsonl")),
            }
            if name == "staleness1":
                subprocess.run([sys.executable, "-m", "tools.plot_timeline", str(run_dir), "--out",
                                str(out / "timeline.png")], cwd=ROOT, check=True)  # fmt: skip
    report = {"recipe": args.recipe, "iters": args.iters, "cpu": cpu_model(), "git": commit, "dirty_tree": dirty,
              "results": results}  # fmt: skip
    (out / "staleness.json").write_text(json.dumps(report, indent=1) + "\n")
    text = (
        f"# {args.recipe}: staleness 1 vs 0 vs colocated ({args.iters} iterations each, {cpu_model()}, "
        f"commit {commit[:10]}{' + uncommitted changes' if dirty else ''})\n\n{table(results)}"
    )
    (out / "staleness.md").write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
