"""Checkpoints and exact resume: a run killed with SIGKILL between checkpoints and resumed with
`--resume` writes the same metrics rows as a run that never stopped."""

import os
import signal
import subprocess
import time

import pytest

from common.outputs import read_jsonl
from conftest import ROOT, run_recipe

pytestmark = pytest.mark.slow  # Ray runs of the tiny recipe (see pytest.ini)

SETTINGS = ("training.train_iters=6", "training.save_interval=2")


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in rows]


def test_sigkill_between_checkpoints_then_resume(tmp_path):
    whole = tmp_path / "whole"
    proc = run_recipe("tiny", whole, *SETTINGS)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert sorted(p.name for p in (whole / "checkpoints").iterdir()) == ["iter_000004", "iter_000006", "latest"]

    broken = tmp_path / "broken"
    env = {**os.environ}
    job = subprocess.Popen(
        [str(ROOT / "run.sh"), "tiny", "--out", str(broken), *SETTINGS],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        # wait until iteration 5 is logged: checkpoint 4 is complete, checkpoint 6 not yet written
        while time.monotonic() < deadline:
            metrics = broken / "metrics.jsonl"
            if metrics.is_file() and len(read_jsonl(metrics)) >= 5:
                break
            assert job.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
        os.killpg(job.pid, signal.SIGKILL)
    finally:
        job.wait()
    assert (broken / "checkpoints" / "latest").read_text().strip() == "iter_000004"
    killed_rows = len(read_jsonl(broken / "metrics.jsonl"))
    assert killed_rows in (5, 6)  # at most one iteration past the checkpoint

    resumed = subprocess.run([str(ROOT / "run.sh"), "tiny", "--resume", str(broken)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "resumed from" in resumed.stdout
    assert comparable(read_jsonl(broken / "metrics.jsonl")) == comparable(read_jsonl(whole / "metrics.jsonl"))
    assert read_jsonl(broken / "rollouts.jsonl") == read_jsonl(whole / "rollouts.jsonl")


def test_resume_without_checkpoint_explains(tmp_path):
    out = tmp_path / "run"
    proc = run_recipe("tiny", out, "training.train_iters=1")
    assert proc.returncode == 0
    again = subprocess.run([str(ROOT / "run.sh"), "tiny", "--resume", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode != 0 and "training.save_interval" in again.stderr
