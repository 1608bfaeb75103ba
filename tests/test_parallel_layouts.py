"""Other parallel layouts of the tiny recipe against its own (actor TP 2): reference and reward
models on pipeline parallelism (Megatron schedules over gloo), a pipeline-parallel actor, and a
data-parallel actor.

Step 1's loss is ln 2 only if the reference (PP=2 here) computes the same log-probs as the actor
(TP=2), so this checks the pipeline path against the tensor-parallel one end to end.
"""

import math

import pytest

from common.outputs import read_jsonl
from conftest import SHORT_RUN, run_recipe

pytestmark = pytest.mark.slow  # Ray runs of the tiny recipe (see pytest.ini)


def test_ref_and_reward_on_two_pipeline_stages(tmp_path):
    out = tmp_path / "run"
    proc = run_recipe(
        "tiny", out,
        "model.tie_word_embeddings=false",  # tied embeddings across pipeline stages need CUDA in Megatron
        "actor_rollout_ref.ref.pipeline_model_parallel_size=2", "resource_pool.ref=2",
        "reward.pipeline_model_parallel_size=2", "resource_pool.reward=2",
        "training.train_iters=2",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = read_jsonl(out / "metrics.jsonl")
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-4
    assert abs(rows[0]["objective/kl"]) < 1e-3
    assert all(len(r["scores"]) == 2 for r in read_jsonl(out / "rollouts.jsonl"))


def test_pipeline_parallel_actor_with_generating_rank(tmp_path):
    # the actor trains on two pipeline stages (Megatron's 1F1B schedule over gloo) and a separate
    # PP=1 rank generates from the weights gathered from both stages
    out = tmp_path / "run"
    proc = run_recipe(
        "tiny", out,
        "model.tie_word_embeddings=false",
        "resource_pool.actor_rollout=3", "actor_rollout_ref.actor_rollout.generate_devices=1",
        "actor_rollout_ref.actor_rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.actor_rollout.pipeline_model_parallel_size=2",
        "training.train_iters=3",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = read_jsonl(out / "metrics.jsonl")
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-4
    assert rows[1]["objective/kl"] != 0.0  # the first update moved the policy away from the reference
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in rows)


def test_data_parallel_actor_trains_as_the_tensor_parallel_one(short_run, tmp_path):
    """Two data-parallel actor ranks (TP 1 each; each trains on its half of the pairs, Megatron DDP
    all-reduces the gradients) give the shipped TP 2 actor's run, iteration by iteration, up to
    float rounding: the layout GPU nodes train with (TP 1-2, DP up to 8)."""
    out = tmp_path / "run"
    proc = run_recipe(
        "tiny", out, *SHORT_RUN,
        "resource_pool.actor_rollout=2", "actor_rollout_ref.actor_rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.actor_rollout.micro_batch_size=4",  # the mini-batch of 8 pairs split over 2 ranks
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    dp, tp = read_jsonl(out / "metrics.jsonl"), read_jsonl(short_run / "run" / "metrics.jsonl")
    assert len(dp) == len(tp) == 4
    for a, b in zip(dp, tp):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        assert a["objective/kl"] == pytest.approx(b["objective/kl"], abs=1e-4)
    scores = lambda run: [x for r in read_jsonl(run / "rollouts.jsonl") for x in r["scores"]]  # noqa: E731
    assert scores(out) == pytest.approx(scores(short_run / "run"), abs=1e-4)  # the same responses sampled
