"""The run folder: ``config.yaml``, ``metrics.jsonl`` (+ ``tensorboard/``), ``rollouts.jsonl``, ``loss.png``.

Lines are flushed as the run goes, so a crashed or running job can be inspected and plotted.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from common.util import jsonl
from common.util.atomic_files import write_text
from common.util.jsonl import read_all as read_jsonl  # noqa: F401  (run files are read with the one JSONL reader)

REQUIRED_METRICS = (
    "step", "loss", "beta", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected",
    "rewards/margins", "rewards/accuracies", "objective/kl", "objective/entropy", "objective/scores",
    "objective/scores_margin", "val/contain_eos_token", "grad_norm", "learning_rate",
    "timing/generate", "timing/reference", "timing/reward", "timing/train", "timing/step",
)  # fmt: skip


def check_out(out: str | None) -> None:
    """``--out``: a new or empty folder this user can create; checked before anything is built."""
    if out is None:
        return
    path = Path(out).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder; pass a new folder path")
    if path.is_dir() and any(path.iterdir()):
        raise ValueError(f"--out {out}: folder exists and is not empty; pass a new folder")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot create --out {out}: {parent} is a file, not a folder; pick a writable path")
    try:  # the one reliable test (root ignores permission bits; /proc and read-only mounts do not)
        os.rmdir(tempfile.mkdtemp(prefix=".odpo-probe-", dir=parent))
    except OSError as e:
        raise ValueError(f"cannot create --out {out}: {e.strerror} ({parent}); pick a writable path") from None


def new_run_dir(recipe: str, out: str | None) -> Path:
    check_out(out)
    if out is not None:
        path = Path(out)
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{recipe}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = Path("runs") / f"{recipe}-{stamp}-{n}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(
            f"cannot create the run folder {path}: {e.strerror}; pick a writable path with --out"
        ) from None
    return path.resolve()


class RunWriter:
    def __init__(self, run_dir: Path, cfg: DictConfig, first_step: int = 1):
        self.dir = run_dir
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))  # atomic: --resume reads it
        self._metrics = jsonl.Appender(run_dir / "metrics.jsonl")
        self._rollouts = jsonl.Appender(run_dir / "rollouts.jsonl")
        from common.run.tensorboard_log import TensorBoardLog

        self._tensorboard = TensorBoardLog(
            run_dir, first_step
        )  # the same rows as event files (common/run/tensorboard_log.py)

    def metrics(self, row: dict) -> None:
        missing = [k for k in REQUIRED_METRICS if k not in row]
        assert not missing, f"metrics row lacks {missing}"
        self._metrics.write([row])
        self._tensorboard.row(row)

    def json(self, name: str, obj: dict) -> None:
        write_text(self.dir / name, json.dumps(obj, indent=1) + "\n")

    def rollouts(self, rows: list[dict]) -> None:
        self._rollouts.write(rows)

    def timeline(self, step: int, spans: list[dict]) -> None:
        """``timeline.jsonl``: when each phase of the iteration ran (seconds since the driver started;
        a resumed run's driver starts again from 0; ``--resume`` first drops the rows after its
        checkpoint, as from the other logs). For ``tools.plot_timeline``; never read back by a run."""
        appender = jsonl.Appender(self.dir / "timeline.jsonl")
        appender.write([{"step": step, **span} for span in spans])
        appender.close()

    def warning(self, step: int, text: str) -> None:
        """``warnings.jsonl``: what the driver warned about (e.g. a collapsed policy), one row each."""
        appender = jsonl.Appender(self.dir / "warnings.jsonl")
        appender.write([{"step": step, "warning": text}])
        appender.close()

    def resumed(self, checkpoint: Path, first_step: int) -> None:
        """``resumes.jsonl``: one row per ``--resume`` (the checkpoint it restored, the iteration it went on from)."""
        appender = jsonl.Appender(self.dir / "resumes.jsonl")
        appender.write(
            [
                {
                    "checkpoint": str(checkpoint),
                    "first_step": first_step,
                    "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                }
            ]
        )
        appender.close()

    def rewind(self, last_step: int) -> None:
        """Drop the rows of iterations after ``last_step`` (a restart goes back to a checkpoint)."""
        from common.run.checkpoint import LOGS, rows_end

        self._metrics.close()
        self._rollouts.close()
        for name in LOGS:
            os.truncate(self.dir / name, rows_end(self.dir / name, last_step))
        self._metrics = jsonl.Appender(self.dir / "metrics.jsonl")
        self._rollouts = jsonl.Appender(self.dir / "rollouts.jsonl")

    def close(self) -> None:
        self._metrics.close()
        self._rollouts.close()
        self._tensorboard.close()


CLOCK_ZERO = time.perf_counter()  # the driver's start: timeline.jsonl's times count from here


class PhaseTimer:
    """``with timer("generate"): ...`` records seconds as ``timing/generate`` in ``timer.seconds``, and
    the phase's span (lane, start, seconds) in ``timer.spans`` for ``timeline.jsonl``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.spans: list[dict] = []

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.record(name, start, time.perf_counter() - start)

    def record(self, name: str, start: float | None, seconds: float, lane: str = "driver") -> None:
        """A phase timed elsewhere (``start``: ``time.perf_counter()``; None: not in this process,
        no span), e.g. sampling on the generating ranks while the driver went on (``lane``)."""
        self.seconds[f"timing/{name}"] = seconds
        if start is None:
            return
        self.spans.append(
            {"phase": name, "lane": lane, "start": round(start - CLOCK_ZERO, 4), "seconds": round(seconds, 4)}
        )


def plot_loss(run_dir: Path, expected: dict | None = None) -> Path:
    """``loss.png``: this run's loss (and mean score) per step, with the recipe's expected curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(run_dir / "metrics.jsonl")
    steps = [r["step"] for r in rows]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(steps, [r["loss"] for r in rows], marker=".", label="this run")
    if expected is not None:
        ax_loss.plot(expected["steps"], expected["loss"], "--", color="gray", label="expected (recorded)")
    ax_loss.set(xlabel="iteration", ylabel="DPO loss", title="loss")
    ax_loss.legend()
    ax_score.plot(steps, [r["objective/scores"] for r in rows], marker=".", color="tab:green")
    ax_score.set(xlabel="iteration", ylabel="mean reward score", title="objective/scores")
    for ax in (ax_loss, ax_score):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run_dir / "loss.png"
    tmp = out.with_name(".loss.png.tmp")
    try:  # a full disk leaves the previous plot, not a part of a new one
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return out
