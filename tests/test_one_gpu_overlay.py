"""Issue #30 item 2: ``./run.sh llama32_1b --overlay one_gpu`` (recipes/llama32_1b/one_gpu.yaml), the
recipe on one GPU, loaded and validated by the project's own config loader, with the files it names
present, and planned by the placement planner onto one node with one GPU: every role on that one
device. What it runs on a GPU is bench/device_run.sh's (docs/device/README.md)."""

import pytest
from conftest import ROOT
from omegaconf import OmegaConf

from common.cluster.place_roles import plan_on_nodes
from common.cluster.placement import Node
from common.config.load import load_config, overlay_file, recipe_files
from common.config.roles import data_parallel_size, max_new_tokens, placed_roles, roles_in_use
from common.run.preflight import check_files

RECIPE = ROOT / "recipes" / "llama32_1b"


@pytest.fixture(scope="module")
def cfg():
    return load_config(RECIPE / "config.yaml", [], overlay_file(RECIPE, "one_gpu"))


def test_overlay_is_valid_and_names_only_files_in_the_tree(cfg):
    check_files(cfg, recipe_files(RECIPE))  # the tokenizer and prompts it names are here (no download)
    for role in ("actor_rollout_ref.actor_rollout", "actor_rollout_ref.ref", "reward"):
        assert OmegaConf.select(cfg, f"{role}.load") is None, (
            f"{role}: random init on the GPU machine (no weights reach it)"
        )


def test_overlay_keeps_the_recipes_model_batch_and_precision(cfg):
    recipe = load_config(RECIPE / "config.yaml")
    assert cfg.model == recipe.model  # full size: 16 layers, hidden 2048, tied embeddings, llama3 rope
    assert cfg.model.num_layers == 16 and cfg.model.hidden_size == 2048
    t, ar = cfg.training, cfg.actor_rollout_ref.actor_rollout
    assert (t.device, t.dtype) == ("cuda", "bf16")
    assert t.global_batch_size == 4 and ar.n_samples_per_prompt == 2 and max_new_tokens(cfg) == 256
    assert t.train_iters >= 12 and 0 < t.save_interval <= t.train_iters  # a checkpoint during the run, and final/
    for key in ("temperature", "top_k", "top_p", "lr", "ppo_mini_batch_size", "clip_grad"):
        assert ar[key] == recipe.actor_rollout_ref.actor_rollout[key], key
    assert cfg.algorithm == recipe.algorithm


def test_every_role_on_the_one_gpu(cfg):
    assert roles_in_use(cfg) == ("actor_rollout", "ref", "reward")
    assert sorted(cfg.resource_pool.colocate) == ["ref", "reward"]  # in the actor's process
    assert cfg.actor_rollout_ref.actor_rollout.generate_devices == 0  # the training rank generates
    assert placed_roles(cfg) == {"actor_rollout": 1}  # one process, one device
    assert data_parallel_size(cfg, "actor_rollout") == 1
    gpu = Node("node-0", "10.0.0.1", devices=1, cpus=16)
    plan = plan_on_nodes(cfg, [gpu], "GPU")
    assert set(plan) == {"actor_rollout", "ref", "reward"}
    assert all(ranks == [gpu] for ranks in plan.values()), plan


def test_one_gpu_is_not_enough_without_colocation(cfg):
    """The recipe itself (4 devices) does not fit the one GPU: what the overlay changes is needed."""
    recipe = load_config(RECIPE / "config.yaml", ["training.device=cuda"])
    with pytest.raises(ValueError, match=r"need 4 GPU slots .* have 1"):
        plan_on_nodes(recipe, [Node("node-0", "10.0.0.1", devices=1, cpus=16)], "GPU")
