"""TensorBoard event files of every metric, beside ``metrics.jsonl`` (which stays the record).

    .venv/bin/tensorboard --logdir runs/            # every run under runs/, one curve each

Each ``metrics.jsonl`` row becomes one scalar per numeric key at its ``step``, in
``RUN_DIR/tensorboard/``, written by ``torch.utils.tensorboard`` (classic ``simple_value`` scalars,
which every TensorBoard version and ``EventAccumulator`` read; needs the ``tensorboard`` package);
events are flushed every row, so a running job shows up live.
"""

from __future__ import annotations

import math
from pathlib import Path


class TensorBoardLog:
    def __init__(self, run_dir: Path, first_step: int = 1):
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run (--resume) re-runs the iterations after its checkpoint: purge_step makes
        # TensorBoard drop the stopped run's events from that step on, as metrics.jsonl drops its rows
        purge = first_step if first_step > 1 else None
        self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), flush_secs=10, purge_step=purge)

    def row(self, row: dict) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self._writer.add_scalar(key, float(value), step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
