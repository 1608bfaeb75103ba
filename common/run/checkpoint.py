"""Periodic checkpoints of a run and exact resume.

Layout, inside the run folder::

    checkpoints/iter_000004/actor/          weights (common.weights.convert's format, one file per TP/PP rank)
    checkpoints/iter_000004/optim_rank{r}.pt  optimizer + LR schedule + RNG of actor rank r
    checkpoints/iter_000004/driver.json     iteration and prompt-stream position
    checkpoints/latest                      name of the newest complete checkpoint

A checkpoint is written into ``iter_N.tmp`` and renamed when complete, and ``latest`` is replaced
atomically afterwards, so a crash at any point leaves the previous checkpoint usable. The
reference and reward models are frozen and rebuilt from their own ``load``/seed; generation is
seeded per iteration, so nothing else is needed for a resumed run to repeat an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from common.config.arch import parameter_count
from common.config.roles import data_parallel_size, role_parallel_sizes
from common.util import jsonl
from common.util.atomic_files import publish_dir, write_text

KEEP = 2  # complete checkpoints kept; older ones are removed after a new one is published
GIB = 1024**3


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (its partial folder is removed; the previous one and
    ``latest`` are as they were)."""


def estimated_bytes(cfg: DictConfig, weights_only: bool = False) -> int:
    """Disk one checkpoint of the actor takes: its weights once (one file per TP/PP rank) and, per
    training rank, Adam's two moments (+ the fp32 main weights in bf16/fp16); ``weights_only``: a
    ``final/`` folder. Measured on ``tiny``: 100.03 MB on disk for 99.98 MB estimated."""
    _, pp = role_parallel_sizes(cfg, "actor_rollout")
    params = parameter_count(cfg.model, pp)
    half = cfg.training.dtype != "fp32"
    weights = params * (2 if half else 4)
    if weights_only:
        return weights
    return weights + data_parallel_size(cfg, "actor_rollout") * params * (12 if half else 8)


def size_text(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 2 else f"{n / 1024**2:.0f} MiB"


def free_bytes(path: Path) -> tuple[Path, int]:
    """(the nearest existing folder of ``path``, the free bytes on its disk)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path, shutil.disk_usage(path).free


def check_disk(cfg: DictConfig, run_dir: Path) -> str | None:
    """Before Ray: a run folder on a disk without room for one checkpoint is refused (ValueError);
    without room for the ``KEEP`` kept plus the one being written, or (saving off) for ``final/``,
    a warning is returned."""
    folder, free = free_bytes(run_dir)
    if cfg.training.save_interval:
        need = estimated_bytes(cfg)
        if free < need:
            raise ValueError(
                f"the disk of the run folder ({folder}) has {size_text(free)} free, and one checkpoint of this "
                f"actor takes about {size_text(need)}: free space, or pass --out on a larger disk"
            )
        if free < (KEEP + 1) * need:
            return (
                f"the disk of the run folder ({folder}) has {size_text(free)} free: {KEEP} checkpoints are kept and a "
                f"new one is written beside them ({size_text(need)} each), so it may fill; a full disk stops the run "
                "with the last good checkpoint intact"
            )
        return None
    need = estimated_bytes(cfg, weights_only=True)
    if free < need:
        return (
            f"the disk of the run folder ({folder}) has {size_text(free)} free; the trained actor (final/) takes "
            f"about {size_text(need)}: free space, or pass --out on a larger disk"
        )
    return None


def temp_folder(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of iteration ``step`` is written before it is renamed into place."""
    return run_dir / "checkpoints" / f"iter_{step:06d}.tmp"


def begin(run_dir: Path, step: int) -> Path:
    """A fresh ``temp_folder`` for the checkpoint of iteration ``step``."""
    tmp = temp_folder(run_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, driver_state: dict) -> Path:
    """Publish a checkpoint whose workers' files are written: driver state, rename, ``latest``."""
    write_text(tmp / "driver.json", json.dumps(driver_state, indent=1) + "\n")
    final = tmp.with_name(tmp.name[: -len(".tmp")])
    publish_dir(tmp, final, may_replace=lambda _: None)  # an older copy of the same iteration (a restart) is ours
    write_text(final.parent / "latest", final.name + "\n")
    complete = sorted(p for p in final.parent.glob("iter_*") if not p.name.endswith(".tmp"))
    for old in complete[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def abandon(tmp: Path) -> None:
    """A checkpoint write failed: remove its partial folder, and the folder itself when it was
    already renamed into place but ``latest`` does not name it. Never raises."""
    shutil.rmtree(tmp, ignore_errors=True)
    final = tmp.with_name(tmp.name[: -len(".tmp")])
    pointer = tmp.parent / "latest"
    try:
        named = pointer.read_text().strip() if pointer.is_file() else None
    except OSError:
        named = final.name  # cannot tell: keep it
    if final.is_dir() and named != final.name:
        shutil.rmtree(final, ignore_errors=True)
    pointer.with_name("latest.tmp").unlink(missing_ok=True)


def write_failed(tmp: Path, reason: str, cfg: DictConfig) -> CheckpointWriteError:
    """The message of a failed checkpoint write (after ``abandon``): the folder, the cause, the free
    space and the size one checkpoint takes."""
    folder, free = free_bytes(tmp.parent)
    need = estimated_bytes(cfg)
    full = " (the disk is full)" if free < need else ""
    return CheckpointWriteError(
        f"writing the checkpoint {tmp.name[: -len('.tmp')]} failed{full}: {reason}; its partial folder {tmp} "
        f"was removed. {size_text(free)} free on the disk of {folder}, one checkpoint takes about {size_text(need)}: "
        "free space (or move the run folder to a larger disk) and continue as below"
    )


def latest(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "driver.json").is_file():
        raise ValueError(
            f"checkpoint {path}: incomplete (no driver.json) although `latest` names it; the run folder is damaged"
        )
    return path


def read_driver_state(ckpt: Path) -> dict:
    return json.loads((ckpt / "driver.json").read_text())


def rows_end(path: Path, last_step: int) -> int:
    """Byte offset where the rows of ``metrics.jsonl``/``rollouts.jsonl`` after iteration
    ``last_step`` begin (they came from the run that stopped). Reads and checks every row, writes
    nothing: a damaged file stops ``--resume`` before any file changes. A last line cut short by a
    kill (no ``\n``) is a torn write and is dropped with the rows after the checkpoint."""
    if not path.is_file():
        raise ValueError(f"--resume: {path} is missing; the run folder is damaged, start a new run")
    end = offset = 0
    later = False  # a row after the checkpoint was seen
    for row, line in jsonl.iter_lines(path):
        offset += len(line)
        if not line.endswith(b"\n"):
            break  # torn final line
        if not line.strip():
            continue
        obj = jsonl.loads(line, f"{path} row {row}")
        if not isinstance(obj, dict) or not isinstance(obj.get("step"), int):
            raise ValueError(
                f"{path} row {row}: no integer `step`; the run folder is damaged (rows there are written by run.sh)"
            )
        if obj["step"] > last_step:
            later = True
        elif later:
            raise ValueError(f"{path} row {row}: iteration {obj['step']} after a later one; the run folder is damaged")
        else:
            end = offset
    return end


LOGS = ("metrics.jsonl", "rollouts.jsonl")
DIAGNOSTIC_LOGS = ("timeline.jsonl",)  # cut back the same way where there (run folders of older versions have none)


@dataclass(frozen=True)
class ResumePoint:
    run_dir: Path
    checkpoint: Path
    state: dict  # driver.json: {"step": k, "stream": PromptStream state}
    log_ends: dict[str, int]  # file name -> byte offset where its rows after the checkpoint begin

    def truncate_logs(self) -> None:
        """Drop the rows written after the checkpoint: the one change ``--resume`` makes before
        Ray starts, done once every check has passed."""
        for name, end in self.log_ends.items():
            path = self.run_dir / name
            os.truncate(path, end)
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def resume_point(run_dir: str | None) -> ResumePoint | None:
    """Where ``--resume RUN_DIR`` continues; clear errors before anything starts."""
    if run_dir is None:
        return None
    path = Path(run_dir).resolve()
    if not (path / "config.yaml").is_file():
        raise ValueError(f"--resume {run_dir}: no config.yaml there; pass a run folder written by run.sh")
    ckpt = latest(path)
    if ckpt is None:
        raise ValueError(f"--resume {run_dir}: the run has no checkpoint yet; set training.save_interval to write them")
    state = read_driver_state(ckpt)
    if not isinstance(state.get("step"), int) or "stream" not in state:
        raise ValueError(f"checkpoint {ckpt}: driver.json lacks step/stream; the checkpoint is damaged")
    actor = ckpt / "actor"
    if not ((actor / "meta.json").is_file() and (actor / "arch.json").is_file()) or not list(
        ckpt.glob("optim_rank*.pt")
    ):
        raise ValueError(f"checkpoint {ckpt}: no actor weights or optimizer state; the checkpoint is damaged")
    logs = [*LOGS, *(name for name in DIAGNOSTIC_LOGS if (path / name).is_file())]
    log_ends = {name: rows_end(path / name, state["step"]) for name in logs}
    return ResumePoint(path, ckpt, state, log_ends)
