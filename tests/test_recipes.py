"""The llama32_1b and llama3_8b recipes: their exact topology and parallel layouts at CPU scale
(the recipe's own ``cpu_scale.yaml`` overlay shrinks only the model), on one node and on a
simulated two-node cluster, compared with the curves recorded by tools/record_curve.py; and the
fast failures before anything is built (missing weights, too few devices)."""

import json
import math

import pytest
from conftest import ROOT, run_recipe

from common.config.load import load_config
from common.config.roles import max_new_tokens
from common.run.expected_curve import compare, load_expected
from common.run.outputs import read_jsonl
from tools.simulated_cluster import cluster_process


def check_curve(recipe: str, run_dir) -> None:
    expected = load_expected(ROOT / "recipes" / recipe, "cpu_scale")
    assert expected is not None, (
        f"recipes/{recipe}/expected_loss.cpu_scale.json missing: record it with tools/record_curve.py"
    )
    losses = [row["loss"] for row in read_jsonl(run_dir / "metrics.jsonl")]
    # policy == reference at step 1: ln 2, up to fp32 summation order (the 8B actor is TP2 x PP2, its
    # reference TP2 x PP1; summed log-probs of ~250 tokens differ in the 7th digit -> ~1e-5 in the loss)
    assert abs(losses[0] - math.log(2)) < 1e-4
    assert compare(expected, losses) == []  # every step within the tolerance, and no one-sided drift


def placed(run_dir) -> dict[str, list[int]]:
    """Node index of every rank of every role, after checking each ran where it was planned."""
    roles = json.loads((run_dir / "placement.json").read_text())["roles"]
    for role, ranks in roles.items():
        assert [r["node"] for r in ranks] == [r["planned_node"] for r in ranks], role
    return {role: [r["node"] for r in ranks] for role, ranks in roles.items()}


def test_cpu_scale_overlays_change_only_what_they_document():
    """Topology, layouts, batch, prompt room and algorithm are the frozen config's; the model and the
    response length shrink."""
    kept = [
        "training.global_batch_size", "training.micro_batch_size", "resource_pool",
        "actor_rollout_ref.actor_rollout.max_prompt_length", "actor_rollout_ref.actor_rollout.temperature",
        "actor_rollout_ref.actor_rollout.tensor_model_parallel_size", "actor_rollout_ref.actor_rollout.pipeline_model_parallel_size",
        "actor_rollout_ref.actor_rollout.generate_devices", "actor_rollout_ref.actor_rollout.generate_tensor_model_parallel_size",
        "actor_rollout_ref.ref.tensor_model_parallel_size", "reward.tensor_model_parallel_size", "reward.pipeline_model_parallel_size",
        "algorithm", "model.vocab_size", "model.tie_word_embeddings", "model.rope_scaling_factor",
    ]  # fmt: skip
    from omegaconf import OmegaConf

    for recipe in ("llama32_1b", "llama3_8b"):
        folder = ROOT / "recipes" / recipe
        full, small = (
            load_config(folder / "config.yaml"),
            load_config(folder / "config.yaml", overlay=folder / "cpu_scale.yaml"),
        )
        for key in kept:
            assert OmegaConf.select(full, key) == OmegaConf.select(small, key), (recipe, key)
        assert small.model.hidden_size < full.model.hidden_size and small.training.device == "cpu"
        assert max_new_tokens(small) == 64 < max_new_tokens(full)
    assert load_config(ROOT / "recipes/llama32_1b/config.yaml").model.tie_word_embeddings is True
    assert load_config(ROOT / "recipes/llama3_8b/config.yaml").model.tie_word_embeddings is False


@pytest.mark.parametrize(
    "recipe,need",
    [
        (
            "llama32_1b",
            [
                "hf download meta-llama/Llama-3.2-1B-Instruct",
                "--out weights/llama32_1b/sft_tp1pp1 --tp 1 --pp 1",
                "Skywork-Reward-V2-Llama-3.2-1B",
            ],
        ),
        (
            "llama3_8b",
            [
                "hf download meta-llama/Llama-3.1-8B-Instruct",
                "--out weights/llama3_8b/sft_tp2pp2 --tp 2 --pp 2",
                "Skywork-Reward-V2-Llama-3.1-8B",
            ],
        ),
    ],
)
def test_missing_weights_fail_before_ray_with_the_commands(recipe, need, tmp_path):
    proc = run_recipe(recipe, tmp_path / "run")
    assert proc.returncode != 0
    assert "hf-to-mcore" in proc.stderr and all(s in proc.stderr for s in need), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # stopped before the run folder, so before Ray


@pytest.mark.slow
@pytest.mark.curve
def test_llama32_1b_cpu_scale_on_one_node(tmp_path):
    out = tmp_path / "run"
    proc = run_recipe("llama32_1b", out, "--overlay", "cpu_scale")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert placed(out) == {"actor_rollout": [0], "rollout": [0], "ref": [0], "reward": [0]}
    check_curve("llama32_1b", out)


@pytest.fixture(scope="module")
def two_nodes_of_8():
    with cluster_process(nodes=2, cpus=8, npus=8) as address:
        yield {"RAY_ADDRESS": address}


@pytest.mark.slow
@pytest.mark.curve
def test_llama3_8b_cpu_scale_on_two_simulated_nodes(two_nodes_of_8, tmp_path):
    out = tmp_path / "run"
    proc = run_recipe(
        "llama3_8b",
        out,
        "--nodes",
        "2",
        "--overlay",
        "cpu_scale",
        "resource_pool.device_resource=NPU",
        env=two_nodes_of_8,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    # the recipe's promise: the actor (4 training + 4 generating ranks) fills node 0; ref and reward share node 1
    assert placed(out) == {"actor_rollout": [0] * 4, "rollout": [0] * 4, "ref": [1] * 4, "reward": [1] * 4}
    cfg = load_config(out / "config.yaml")
    actor = cfg.actor_rollout_ref.actor_rollout
    assert (
        actor.tensor_model_parallel_size,
        actor.pipeline_model_parallel_size,
        actor.generate_tensor_model_parallel_size,
    ) == (2, 2, 2)
    assert cfg.actor_rollout_ref.ref.tensor_model_parallel_size == cfg.reward.tensor_model_parallel_size == 2
    check_curve("llama3_8b", out)


@pytest.mark.slow
def test_too_few_devices_fails_naming_the_roles_short(two_nodes_of_8, tmp_path):
    """The 8B recipe on one of the two 8-device nodes: 16 devices needed, 8 there."""
    proc = run_recipe(
        "llama3_8b", tmp_path / "run", "--overlay", "cpu_scale", "resource_pool.device_resource=NPU", env=two_nodes_of_8
    )
    assert proc.returncode != 0
    assert "short by 8 (role ref gets 0 of its 4; role reward gets 0 of its 4)" in proc.stderr, proc.stderr[-3000:]
