"""`load` keys: Hugging Face directories are read by the workers (architecture from config.json),
and a wrong or missing path fails before Ray starts."""

import math

import pytest
import torch
from conftest import run_recipe

from common.run.outputs import read_jsonl


def tiny_hf(path, *, reward: bool):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    cfg = LlamaConfig(
        vocab_size=128256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=500000.0,
        tie_word_embeddings=not reward,
        num_labels=1,
        pad_token_id=128009,
    )
    torch.manual_seed(3 if reward else 2)
    model = (LlamaForSequenceClassification if reward else LlamaForCausalLM)(cfg)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return tiny_hf(root / "policy", reward=False), tiny_hf(root / "reward", reward=True)


@pytest.mark.slow
def test_recipe_runs_from_hf_weights(hf_dirs, tmp_path):
    policy, reward = hf_dirs
    out = tmp_path / "run"
    proc = run_recipe(
        "tiny", out, f"actor_rollout_ref.actor_rollout.load={policy}", f"reward.load={reward}", "training.train_iters=2"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = read_jsonl(out / "metrics.jsonl")
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-4  # the reference loaded the same weights
    scores = [s for r in read_jsonl(out / "rollouts.jsonl") for s in r["scores"]]
    assert len(set(scores)) > 1  # the loaded reward model scores responses differently


def test_reward_model_where_a_policy_belongs_fails_fast(hf_dirs, tmp_path):
    _, reward = hf_dirs
    proc = run_recipe("tiny", tmp_path / "run", f"actor_rollout_ref.actor_rollout.load={reward}")
    assert proc.returncode != 0
    assert "is a reward model" in proc.stderr
    assert not (tmp_path / "run").exists()  # stopped before the run folder, so before Ray


def test_missing_weights_say_what_to_download(tmp_path):
    proc = run_recipe("tiny", tmp_path / "run", f"reward.load={tmp_path / 'nowhere'}")
    assert proc.returncode != 0
    assert "not found" in proc.stderr and "hf download" in proc.stderr and "tools.convert_checkpoint" in proc.stderr
