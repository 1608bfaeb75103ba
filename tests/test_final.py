"""``RUN_DIR/final`` after a run, its Hugging Face export, and the TensorBoard event files.

One short ``./run.sh tiny --export-hf DIR`` (4 iterations, actor TP=2; conftest's ``short_run``): the final checkpoint loads
into the project's model (TP=1 here, merged from the 2 shards), the exported folder into
transformers, and both give the same logits within 1e-4 on a few chat prompts.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT

PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "hi"]


def test_final_checkpoint_is_written(short_run):
    final = short_run / "run" / "final"
    meta = json.loads((final / "meta.json").read_text())
    assert (meta["kind"], meta["tp"], meta["pp"]) == ("policy", 2, 1)
    assert sorted(p.name for p in final.glob("*.safetensors")) == [
        "model_tp0_pp0.safetensors",
        "model_tp1_pp0.safetensors",
    ]
    assert not list((short_run / "run").glob(".final*"))  # no temporary left over


def test_exported_hf_logits_match_the_project(short_run, world1):
    from common.model.llama import build_policy
    from common.weights.convert import arch_from_path
    from tests._export import check_export_matches

    arch, _ = arch_from_path(short_run / "run" / "final")
    start = build_policy(arch, dtype=torch.float32, seed=1234).eval()  # the run's random init
    check_export_matches(short_run / "run" / "final", short_run / "hf", PROMPTS, start)


def test_convert_cli_accepts_final(short_run, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "hf2"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.convert_checkpoint",
            "mcore-to-hf",
            "--ckpt",
            str(short_run / "run" / "final"),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "config.json").is_file()


def test_tensorboard_has_every_metric(short_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from common.run.outputs import read_jsonl

    rows = read_jsonl(short_run / "run" / "metrics.jsonl")
    acc = EventAccumulator(str(short_run / "run" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    want = {k for k in rows[0] if k != "step"}
    assert want <= tags, sorted(want - tags)
    loss = acc.Scalars("loss")
    assert [e.step for e in loss] == [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert (short_run / "run" / "rollouts.jsonl").is_file()


def _evaluate(run_dir, out, *extra):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "tools.evaluate", "--run", str(run_dir), "--prompts", str(ROOT / "data/prompts/tiny_prompts.jsonl"),
         "--n", "8", "--out", str(out), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "win rate" in proc.stdout
    return json.loads(out.read_text())


def test_evaluate_with_the_runs_reward_model(short_run, tmp_path):
    """tiny's reward is a random-init reward model: rebuilt in-process from the run's config."""
    import math

    result = _evaluate(short_run / "run", tmp_path / "eval.json")
    assert result["n"] == 8 == len(result["samples"])
    for key in ("win_rate", "mean_reward_initial", "mean_reward_trained", "kl"):
        assert math.isfinite(result[key])
    assert 0.0 <= result["win_rate"] <= 1.0
    lo, hi = result["win_rate_ci95"]
    assert lo <= result["win_rate"] <= hi


def test_evaluate_same_policy_is_a_tie_with_zero_kl(short_run, tmp_path):
    """A run whose final weights are its starting weights: paired samples are identical, so every
    prompt ties (win rate 0.5) and the KL to the reference is exactly 0; --reward replaces the reward."""
    import shutil

    from omegaconf import OmegaConf

    run = tmp_path / "same"
    run.mkdir()
    shutil.copytree(short_run / "run" / "final", run / "final")
    cfg = OmegaConf.load(short_run / "run" / "config.yaml")
    cfg.actor_rollout_ref.actor_rollout.load = str(run / "final")
    OmegaConf.save(cfg, run / "config.yaml")
    result = _evaluate(run, tmp_path / "eval.json", "--reward", "reward_functions.sentiment:vader")
    assert result["reward"] == "reward_functions.sentiment:vader"
    assert result["win_rate"] == 0.5
    assert result["mean_reward_initial"] == result["mean_reward_trained"]
    assert result["kl"] == 0.0
    assert all(s["initial"] == s["trained"] for s in result["samples"])
