"""Checkpoints and exact resume: a run killed with SIGKILL between checkpoints and resumed with
`--resume` writes the same metrics rows as a run that never stopped. Its prompts hold U+2028 and
U+0085 inside strings (valid JSON Lines; real web text has them), so the prompt reader, the
rollouts writer and the resume's reader all meet them."""

import json
import shutil
import subprocess

import pytest
from conftest import ROOT, run_recipe, run_recipe_killed

from common.run.outputs import read_jsonl

pytestmark = pytest.mark.slow  # Ray runs of the tiny recipe (see pytest.ini)

SETTINGS = ("training.train_iters=6", "training.save_interval=2")
SEPARATORS = ("\u2028", "\u0085", "\u2029")


def prompts_with_separators(path):
    """16 prompts, each with a Unicode line separator inside the string, written raw (not escaped)."""
    lines = [
        json.dumps({"prompt": f"Question {i}:{SEPARATORS[i % 3]}what is {i} + {i}?"}, ensure_ascii=False)
        for i in range(16)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert len(path.read_text(encoding="utf-8").splitlines()) > 16  # what str.splitlines would make of it
    return f"actor_rollout_ref.actor_rollout.data_path={path}"


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in rows]


def test_sigkill_between_checkpoints_then_resume(tmp_path):
    settings = (*SETTINGS, prompts_with_separators(tmp_path / "prompts.jsonl"))
    whole = tmp_path / "whole"
    proc = run_recipe("tiny", whole, *settings)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert sorted(p.name for p in (whole / "checkpoints").iterdir()) == ["iter_000004", "iter_000006", "latest"]

    broken = tmp_path / "broken"
    # killed once iteration 5 is logged: checkpoint 4 is complete, checkpoint 6 not yet written
    run_recipe_killed("tiny", broken, 5, *settings)
    assert (broken / "checkpoints" / "latest").read_text().strip() == "iter_000004"
    killed_rows = len(read_jsonl(broken / "metrics.jsonl"))
    assert killed_rows in (5, 6)  # at most one iteration past the checkpoint
    # rollouts as a writer that does not escape the separators leaves them (earlier versions of run.sh did)
    rollouts = broken / "rollouts.jsonl"
    raw = [json.dumps(r, ensure_ascii=False) for r in read_jsonl(rollouts)]
    rollouts.write_text("".join(line + "\n" for line in raw), encoding="utf-8")
    assert "\u2028" in rollouts.read_text(encoding="utf-8") and "\u0085" in rollouts.read_text(encoding="utf-8")

    resumed = subprocess.run(
        [str(ROOT / "run.sh"), "tiny", "--resume", str(broken)], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert [(r["checkpoint"], r["first_step"]) for r in read_jsonl(broken / "resumes.jsonl")] == [
        (str((broken / "checkpoints" / "iter_000004").resolve()), 5)
    ]
    assert comparable(read_jsonl(broken / "metrics.jsonl")) == comparable(read_jsonl(whole / "metrics.jsonl"))
    assert read_jsonl(broken / "rollouts.jsonl") == read_jsonl(whole / "rollouts.jsonl")
    prompts = [r["prompt"] for r in read_jsonl(whole / "rollouts.jsonl")]
    assert len(prompts) == 6 * 8 and all(any(c in p for c in SEPARATORS) for p in prompts)


def run_copy(src, dst):
    """A shared run's files in a folder of this test's own (its checkpoints linked, not copied: a
    resume that is refused must not touch them)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, dst / f.name)
    if (src / "checkpoints").is_dir():
        (dst / "checkpoints").symlink_to(src / "checkpoints")
    return dst


def test_damaged_logs_stop_resume_before_any_file_changes(short_run, tmp_path):
    out = run_copy(short_run / "run", tmp_path / "run")  # 4 iterations, checkpoints 2 and 4
    with open(out / "rollouts.jsonl", "ab") as f:
        f.write(b'{"step": 5, "prompt": "cut\n')  # a damaged row, not at the end of the file
        f.write(b'{"step": 5}\n')
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    again = subprocess.run(
        [str(ROOT / "run.sh"), "tiny", "--resume", str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert again.returncode != 0 and "rollouts.jsonl row" in again.stderr and "invalid JSON" in again.stderr, (
        again.stderr[-3000:]
    )
    assert "Traceback" not in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # metrics.jsonl untouched too


def test_resume_without_checkpoint_explains(tiny_run, tmp_path):
    assert not (tiny_run / "checkpoints").exists()  # the shipped tiny recipe saves none (save_interval 0)
    out = run_copy(tiny_run, tmp_path / "run")
    again = subprocess.run(
        [str(ROOT / "run.sh"), "tiny", "--resume", str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert again.returncode != 0 and "training.save_interval" in again.stderr
