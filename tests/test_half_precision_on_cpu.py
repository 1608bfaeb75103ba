"""The whole loop in bf16, the dtype GPU runs train in, on CPU: `./run.sh tiny training.dtype=bf16`
through Ray (actor TP 2, reference, reward), a checkpoint, a resume from it and the Hugging Face
export; and fp16's loss scaling (steps skipped while the scale comes down, then training, and a
resume that restores the scale). tests/_half_precision_on_cpu.py (applied in the driver and every Ray worker by
tests/_half_precision_site/sitecustomize.py) answers Megatron's CUDA-only type checks and lets bf16
and fp16 through on CPU; everything else is the code a GPU run executes, CUDA aside."""

import json
import math
import os
import shutil
import subprocess

import pytest
from conftest import ROOT
from safetensors import safe_open

from common.run.outputs import read_jsonl

HALF_PRECISION_ENV = {"PYTHONPATH": str(ROOT / "tests" / "_half_precision_site"), "ODPO_HALF_PRECISION_ON_CPU": "1"}
# iterations smaller than the recipe's (a third of its tokens; half-precision matmuls are slow on
# CPU), nothing these tests check depends on the size: 4 prompts (8 responses) of 16 tokens
# (max_prompt_length 40 keeps every tiny prompt, the longest has 37 tokens)
SMALL = (
    "training.global_batch_size=4",
    "training.micro_batch_size=4",
    "actor_rollout_ref.actor_rollout.ppo_mini_batch_size=4",
    "actor_rollout_ref.actor_rollout.max_prompt_length=40",
    "training.seq_length=56",
)


def _run(*args: str, **env_extra: str) -> subprocess.CompletedProcess:
    # a private Ray instance (no RAY_ADDRESS): its workers start with this environment, the shared
    # test cluster's would not
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | HALF_PRECISION_ENV | env_extra
    return subprocess.run(
        [str(ROOT / "run.sh"), "tiny", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=900
    )


def _untimed(row: dict) -> str:
    """A metrics row without its timings, as text: rows compare equal with NaN values in them."""
    return json.dumps({k: v for k, v in row.items() if not k.startswith("timing/")}, sort_keys=True)


def _dtypes(folder) -> set[str]:
    found = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            found |= {f.get_slice(name).get_dtype() for name in f.keys()}
    return found


@pytest.mark.slow
def test_tiny_recipe_trains_resumes_and_exports_in_bf16(tmp_path):
    out, hf = tmp_path / "run", tmp_path / "hf"
    proc = _run(
        "--out",
        str(out),
        *SMALL,
        "training.dtype=bf16",
        "training.train_iters=3",
        "training.save_interval=2",
        "--export-hf",
        str(hf),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-2  # policy == reference at step 1 (bf16 rounding)
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in rows)
    assert rows[1]["loss"] != rows[0]["loss"]  # the actor moved
    # the trained actor (two TP shards) and the export are bf16 throughout
    assert len(list((out / "final").glob("*.safetensors"))) == 2 and _dtypes(out / "final") == {"BF16"}
    hf_config = json.loads((hf / "config.json").read_text())
    assert _dtypes(hf) == {"BF16"} and hf_config.get("dtype", hf_config.get("torch_dtype")) == "bfloat16"

    # resumed from iteration 2's checkpoint (bf16 weights + fp32 main parameters and Adam moments),
    # iteration 3 is the uninterrupted run's, bit for bit
    again = tmp_path / "again"
    shutil.copytree(out, again)
    proc = _run("--resume", str(again))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert [_untimed(r) for r in read_jsonl(again / "metrics.jsonl")] == [_untimed(r) for r in rows]


@pytest.mark.slow
def test_fp16_skips_overflowing_steps_until_the_loss_scale_fits_then_trains(tmp_path):
    """fp16 with a first loss scale too large (2^23; the run's own is 2^16, and these gradients
    overflow at every scale down to 2^20): Megatron's optimizer skips those steps and lowers the
    scale (after its hysteresis of 2), the policy stays the reference meanwhile (KL 0), and once the
    scale fits the steps are taken and the gradient norm is the true one (the loss is scaled by the
    schedules and the gradients unscaled by the optimizer: a norm 2^k too small would mean the scale
    never reached the loss)."""
    out = tmp_path / "run"
    proc = _run(
        "--out",
        str(out),
        *SMALL,
        "training.dtype=fp16",
        "training.train_iters=7",
        "training.save_interval=4",
        ODPO_INITIAL_LOSS_SCALE=str(2.0**23),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = read_jsonl(out / "metrics.jsonl")
    assert len(rows) == 7 and all(r["skipped_steps"] in (0, 1) for r in rows)
    skipped = [r["skipped_steps"] == 1 for r in rows]
    first_taken = skipped.index(False)
    assert first_taken >= 2 and all(skipped[:first_taken])
    # the first overflow only spends the hysteresis (2); each one after it halves the scale
    assert [r["loss_scale"] for r in rows[:first_taken]] == [2.0 ** (23 - k) for k in range(first_taken)]
    assert all(math.isnan(r["grad_norm"]) for r in rows[:first_taken])  # no norm for a skipped step
    # no update yet when these iterations' log-probs were taken: the policy is the reference (up to
    # the rounding of its other layout: actor TP 2, reference TP 1), then it moves
    assert all(abs(r["objective/kl"]) < 1e-3 for r in rows[: first_taken + 1])
    assert max(abs(r["objective/kl"]) for r in rows[first_taken + 1 :]) > 1e-3
    taken = [r for r in rows if r["skipped_steps"] == 0]
    assert all(0.1 < r["grad_norm"] < 10 for r in taken)  # the fp32 run's norms are ~1.7 here

    # resumed from iteration 4's checkpoint, the loss scaler's state (scale 2^20, hysteresis spent)
    # included: iterations 5-7 as the uninterrupted run had them, which hold a skipped step and taken
    # ones (a fresh scaler, at the run's own 2^16, would take iteration 5's step)
    assert True in skipped[4:] and False in skipped[4:]
    again = tmp_path / "again"
    shutil.copytree(out, again)
    proc = _run("--resume", str(again))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert [_untimed(r) for r in read_jsonl(again / "metrics.jsonl")] == [_untimed(r) for r in rows]
