"""`./run.sh tiny` through Ray, end to end: output files, invariants, the stored curve."""

import math

import pytest

from common.config import load_config
from common.expected_curve import compare, load_expected
from common.outputs import REQUIRED_METRICS, read_jsonl
from conftest import ROOT, run_recipe


@pytest.mark.slow
def test_metrics_have_every_key_one_row_per_iteration(tiny_run):
    rows = read_jsonl(tiny_run / "metrics.jsonl")
    iters = load_config(tiny_run / "config.yaml").training.train_iters
    assert [r["step"] for r in rows] == list(range(1, iters + 1))
    for r in rows:
        assert not [k for k in REQUIRED_METRICS if k not in r]
        assert all(math.isfinite(r[k]) for k in REQUIRED_METRICS)


@pytest.mark.slow
def test_step_one_loss_is_ln2(tiny_run):
    first = read_jsonl(tiny_run / "metrics.jsonl")[0]
    assert abs(first["loss"] - math.log(2)) < 1e-4
    assert abs(first["objective/kl"]) < 1e-3  # policy == reference before the first update


@pytest.mark.slow
def test_every_pair_prefers_the_higher_score(tiny_run):
    rows = read_jsonl(tiny_run / "rollouts.jsonl")
    assert rows
    for r in rows:
        assert r["chosen"] != r["rejected"]
        assert r["scores"][r["chosen"]] >= r["scores"][r["rejected"]]
        assert len(r["responses"]) == len(r["scores"]) == 2


@pytest.mark.slow
def test_outputs_exist(tiny_run):
    assert (tiny_run / "config.yaml").is_file()
    assert (tiny_run / "loss.png").stat().st_size > 10_000


@pytest.mark.curve
@pytest.mark.slow
def test_matches_stored_curve(tiny_run):
    expected = load_expected(ROOT / "recipes" / "tiny")
    assert expected is not None, "recipes/tiny/expected_loss.json missing: run python -m tools.record_curve tiny"
    losses = [r["loss"] for r in read_jsonl(tiny_run / "metrics.jsonl")]
    problems = compare(expected, losses)  # every step within the tolerance, and no one-sided drift
    assert not problems, "\n".join(problems)


def test_unknown_recipe_lists_recipes(tmp_path):
    proc = run_recipe("nope", tmp_path / "x")
    assert proc.returncode != 0
    assert "tiny" in proc.stderr and "unknown recipe" in proc.stderr


def test_bad_override_fails_before_ray(tmp_path):
    proc = run_recipe("tiny", tmp_path / "x", "training.train_itres=2")
    assert proc.returncode != 0
    assert "training.train_iters" in proc.stderr
    assert not (tmp_path / "x").exists()  # nothing was started or written


def test_short_run_writes_every_output_and_a_checkpoint(short_run):
    """The fast tier's end-to-end run: four iterations of the shipped tiny recipe through Ray, with
    checkpoints (session, workers, sampling, reward model, reference, DPO step, outputs)."""
    out = short_run / "run"
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-4
    expected = load_expected(ROOT / "recipes" / "tiny")
    for row, want in zip(rows, expected["loss"]):  # steps 1-4 of the stored curve
        assert abs(row["loss"] - want) <= expected["tolerance"], (row["step"], row["loss"], want)
    assert len(read_jsonl(out / "rollouts.jsonl")) == 4 * load_config(out / "config.yaml").training.global_batch_size
    assert (out / "checkpoints" / "latest").read_text().strip() == "iter_000004"
    assert (out / "loss.png").stat().st_size > 10_000


@pytest.mark.slow
def test_several_samples_epochs_and_steps_per_iteration_with_a_schedule(tmp_path):
    """4 samples per prompt (the best is chosen, the worst rejected), 2 epochs over the pairs in
    mini-batches of 4 (4 optimizer steps per iteration), 25 % linear warmup then cosine decay to
    min_lr: the learning rate after each iteration is Megatron's schedule at 4, 8, 12, 16 steps."""
    a = "actor_rollout_ref.actor_rollout"
    out = tmp_path / "run"
    proc = run_recipe(
        "tiny", out, "training.train_iters=4", f"{a}.n_samples_per_prompt=4", f"{a}.ppo_epochs=2",
        f"{a}.ppo_mini_batch_size=4", f"{a}.micro_batch_size=2", f"{a}.lr_decay_style=cosine",
        f"{a}.lr_warmup_fraction=0.25", f"{a}.min_lr=1e-4",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = read_jsonl(out / "metrics.jsonl")
    lr, min_lr = 1e-3, 1e-4  # tiny's lr
    cosine = lambda step: min_lr + (lr - min_lr) * 0.5 * (math.cos(math.pi * (step - 4) / 12) + 1)  # noqa: E731
    assert [r["learning_rate"] for r in rows] == pytest.approx([lr, cosine(8), cosine(12), min_lr], rel=1e-9)
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-4 and all(math.isfinite(r["grad_norm"]) for r in rows)
    for r in read_jsonl(out / "rollouts.jsonl"):
        scores = r["scores"]
        assert len(r["responses"]) == len(scores) == 4
        assert scores[r["chosen"]] == max(scores) and scores[r["rejected"]] == min(scores)
