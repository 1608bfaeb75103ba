"""`./run.sh tiny` through Ray, end to end: output files, invariants, the stored curve."""

import math

import pytest
from conftest import ROOT, run_recipe

from common.config.load import load_config
from common.run.expected_curve import START_STEPS, compare, compare_start, load_expected
from common.run.outputs import REQUIRED_METRICS, read_jsonl


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
    assert len(read_jsonl(out / "rollouts.jsonl")) == 4 * load_config(out / "config.yaml").training.global_batch_size
    assert (out / "checkpoints" / "latest").read_text().strip() == "iter_000004"
    assert (out / "loss.png").stat().st_size > 10_000


@pytest.mark.curve
def test_short_run_starts_on_the_stored_curve(short_run):
    """The fast tier's curve check: the short run's steps 1-4 on the stored curve's, at compare_start's
    tolerance (1e-4; the full curve's 1e-3 and its drift bound let beta x 1.1 through over these steps)."""
    losses = [r["loss"] for r in read_jsonl(short_run / "run" / "metrics.jsonl")]
    problems = compare_start(load_expected(ROOT / "recipes" / "tiny"), losses)
    assert not problems, "\n".join(problems)


def test_start_check_tells_beta_x_1_1_from_rounding():
    """compare_start on the stored curve's first steps moved as a regression and as rounding move them.
    beta x 1.1 scales each step's distance from ln 2 by 1.1 (the sigmoid loss is ~ln 2 - beta x margin / 2
    and Adam's first steps hardly depend on the gradient's scale: measured on a real run, steps 2-4 moved by
    +3.4e-4, +6.4e-4, -4.9e-4, the scaling predicts +3.3e-4, +6.1e-4, -5.1e-4); rounding by other kernels
    moves them by ~2e-6, either way. The run itself: test_start_check_fails_a_run_with_another_beta."""
    expected = load_expected(ROOT / "recipes" / "tiny")
    start, ln2 = expected["loss"][:START_STEPS], math.log(2)
    assert compare_start(expected, start) == []
    assert compare_start(expected, [x + 2e-6 * (-1) ** k for k, x in enumerate(start)]) == []
    for factor in (1.1, 1 / 1.1):
        scaled = [ln2 + factor * (x - ln2) for x in start]
        assert compare(expected | {"loss": start}, scaled) == []  # the full curve's check lets it through
        assert compare_start(expected, scaled) != [], factor
    with pytest.raises(ValueError, match="compare_start takes 1 to 4 steps"):
        compare_start(expected, expected["loss"][: START_STEPS + 1])


@pytest.mark.slow
@pytest.mark.parametrize("factor", [1.1])
def test_start_check_fails_a_run_with_another_beta(tmp_path, factor):
    """The fast tier's curve check (test_short_run_starts_on_the_stored_curve) on a real short run of
    the tiny recipe with beta x ``factor``: it fails. (Measured, beta x 1.1: steps 1-4 off the curve by
    +4e-7, +3.4e-4, +6.4e-4, -4.9e-4; the shipped beta's run: by at most 1.8e-6.)"""
    beta = load_config(ROOT / "recipes" / "tiny" / "config.yaml").algorithm.beta
    out = tmp_path / "run"
    proc = run_recipe("tiny", out, f"training.train_iters={START_STEPS}", f"algorithm.beta={beta * factor!r}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    losses = [r["loss"] for r in read_jsonl(out / "metrics.jsonl")]
    assert len(losses) == START_STEPS and abs(losses[0] - math.log(2)) < 1e-4  # a run; step 1 is ln 2 at any beta
    assert compare_start(load_expected(ROOT / "recipes" / "tiny"), losses) != []


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
