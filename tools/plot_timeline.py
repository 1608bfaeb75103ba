"""Draw when each phase of a run's iterations ran: ``timeline.png`` from its ``timeline.jsonl``.

    .venv/bin/python -m tools.plot_timeline RUN_DIR                  # the last 6 iterations -> RUN_DIR/timeline.png
    .venv/bin/python -m tools.plot_timeline RUN_DIR --steps 3-10 --out t.png

One lane for the driver (the phases an iteration waits for, in order) and one for the dedicated
generating ranks when they sample the next iteration's responses meanwhile (``staleness=1``,
docs/cluster.md): there the overlap shows as sampling under the reference and training bars.
Times are seconds since the driver started (a resumed run's part is drawn on its own: the last one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.run.outputs import read_jsonl

LANES = ("driver", "generating ranks")
COLORS = {"generate": "tab:blue", "wait_generate": "tab:cyan", "sync": "tab:purple", "reward": "tab:orange",
          "reference": "tab:green", "train": "tab:red", "save": "tab:gray"}  # fmt: skip


def last_segment(spans: list[dict]) -> list[dict]:
    """The spans of the last driver process (a resume starts the clock again and repeats steps)."""
    start = 0
    for i in range(1, len(spans)):
        if spans[i]["step"] < spans[i - 1]["step"]:
            start = i
    return spans[start:]


def plot(run_dir: Path, steps: tuple[int, int] | None, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = run_dir / "timeline.jsonl"
    if not path.is_file():
        raise ValueError(f"{path}: not found; a run writes it from this version on (./run.sh ...)")
    spans = [s for s in last_segment(read_jsonl(path)) if s["phase"] != "step"]
    if steps is None:
        last = max(s["step"] for s in spans)
        steps = (max(1, last - 5), last)
    spans = [s for s in spans if steps[0] <= s["step"] <= steps[1]]
    if not spans:
        raise ValueError(f"{path}: no iteration in {steps[0]}-{steps[1]}")
    lanes = [lane for lane in LANES if any(s["lane"] == lane for s in spans)]
    origin = min(s["start"] for s in spans)
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.8 * len(lanes)))
    seen = set()
    for s in spans:
        y = lanes.index(s["lane"])
        label = None if s["phase"] in seen else s["phase"]
        seen.add(s["phase"])
        ax.barh(y, s["seconds"], left=s["start"] - origin, height=0.6, color=COLORS.get(s["phase"], "black"),
                edgecolor="white", label=label)  # fmt: skip
        if s["lane"] == "driver" and s["phase"] in ("train", "generate"):
            ax.text(s["start"] - origin + s["seconds"] / 2, y, str(s["step"]), ha="center", va="center", fontsize=7)
    ax.set_yticks(range(len(lanes)), lanes)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (from the first phase shown)")
    ax.set_title(f"{run_dir.name}: iterations {steps[0]}-{steps[1]} (numbers: the iteration)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=len(seen), frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.plot_timeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder (holding timeline.jsonl)")
    parser.add_argument("--steps", help="iterations to draw, e.g. 3-10 (default: the last 6)")
    parser.add_argument("--out", help="the PNG to write (default: RUN_DIR/timeline.png)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    try:
        steps = tuple(int(x) for x in args.steps.split("-")) if args.steps else None
        if steps is not None and (len(steps) != 2 or steps[0] > steps[1]):
            raise ValueError(f"--steps {args.steps}: give FIRST-LAST, e.g. 3-10")
        out = plot(run_dir, steps, Path(args.out) if args.out else run_dir / "timeline.png")  # type: ignore[arg-type]
    except ValueError as e:
        parser.error(str(e))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
