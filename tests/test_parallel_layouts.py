"""Reference and reward models on pipeline parallelism (Megatron schedules over gloo).

Step 1's loss is ln 2 only if the reference (PP=2 here) computes the same log-probs as the actor
(TP=2), so this checks the pipeline path against the tensor-parallel one end to end.
"""

import math

from common.outputs import read_jsonl
from conftest import run_recipe


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
