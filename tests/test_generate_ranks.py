"""Dedicated generating ranks (actor_rollout.generate_devices): weights synced from the training
ranks before every rollout. With the same TP layout the run must repeat the colocated run bit for
bit (same seeds, same weights); with another TP the weights are re-sharded."""

import pytest
from conftest import ROOT, run_recipe

from common.run.expected_curve import compare, load_expected
from common.run.outputs import read_jsonl

pytestmark = pytest.mark.slow  # Ray runs of the tiny recipe (see pytest.ini)


@pytest.fixture(scope="module")
def same_tp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "run"
    proc = run_recipe(
        "tiny",
        out,
        "training.train_iters=3",
        "resource_pool.actor_rollout=4",
        "actor_rollout_ref.actor_rollout.generate_devices=2",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


@pytest.mark.curve
def test_same_tp_generators_repeat_the_colocated_curve(same_tp_run):
    rows = read_jsonl(same_tp_run / "metrics.jsonl")
    expected = load_expected(ROOT / "recipes" / "tiny")  # the stored curve is the colocated run's
    first3 = {**expected, "loss": expected["loss"][:3]}
    assert compare(first3, [r["loss"] for r in rows]) == []
    assert all(r["timing/sync"] > 0 for r in rows)


def test_generators_with_another_tp_get_resharded_weights(same_tp_run, tmp_path):
    out = tmp_path / "run"
    proc = run_recipe(
        "tiny",
        out,
        "training.train_iters=3",
        "resource_pool.actor_rollout=3",
        "actor_rollout_ref.actor_rollout.generate_devices=1",
        "actor_rollout_ref.actor_rollout.generate_tensor_model_parallel_size=1",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ours = read_jsonl(out / "rollouts.jsonl")
    ref = read_jsonl(same_tp_run / "rollouts.jsonl")
    # Step 2 samples from the weights after step 1's update. TP=1 and TP=2 logits differ by float
    # rounding only, which keyed Gumbel-max sampling does not turn into other tokens (it would take
    # two perturbed logits tying within ~1e-6), so every response of steps 1-3 is the same; weights
    # one update stale would change most of them.
    assert [r["responses"] for r in ours] == [r["responses"] for r in ref]
