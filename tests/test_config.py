"""Config strictness and validation messages (no model is built)."""

from pathlib import Path

import pytest

from common.config.load import load_config

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "config.yaml"


def test_tiny_config_loads_and_roles_inherit_training():
    cfg = load_config(TINY)
    assert cfg.actor_rollout_ref.actor_rollout.tensor_model_parallel_size == 2  # role overrides training
    assert cfg.actor_rollout_ref.ref.tensor_model_parallel_size == 1  # inherited from training
    assert cfg.reward.micro_batch_size == cfg.training.micro_batch_size
    assert cfg.reward.model.hidden_size == cfg.model.hidden_size


def test_override_applies():
    cfg = load_config(TINY, ["training.train_iters=3", "algorithm.loss_type=ipo"])
    assert cfg.training.train_iters == 3 and cfg.algorithm.loss_type == "ipo"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("training.train_itrs=3", "training.train_iters"),
        ("actor_rollout_ref.actor_rollout.lrr=1", "actor_rollout_ref.actor_rollout.lr"),
        ("algorithm.bta=0.2", "algorithm.beta"),
        ("clip_ratio=0.2", "unknown key"),
    ],
)
def test_unknown_key_names_nearest_valid_keys(override, fragment):
    with pytest.raises(ValueError, match="unknown key") as e:
        load_config(TINY, [override])
    assert override.split("=")[0] in str(e.value) and fragment in str(e.value)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (
            ["resource_pool.actor_rollout=3"],
            "resource_pool.actor_rollout - generate_devices=3 is not a positive multiple of TP x PP = 2 x 1",
        ),
        (["actor_rollout_ref.actor_rollout.max_prompt_length=96"], "must be < training.seq_length"),
        (["actor_rollout_ref.actor_rollout.temperature=0"], "temperature=0"),
        (["actor_rollout_ref.actor_rollout.top_p=1.5"], "top_p"),
        (["actor_rollout_ref.actor_rollout.decode=fast"], "decode='fast': use one of auto, eager, static, graph"),
        (["actor_rollout_ref.actor_rollout.decode=graph"], "decode=graph needs CUDA"),
        (["training.global_batch_size=6"], "ppo_mini_batch_size"),
        (["actor_rollout_ref.actor_rollout.ppo_mini_batch_size=4"], "micro_batch_size"),
        (["actor_rollout_ref.actor_rollout.n_samples_per_prompt=1"], "at least 2"),
        (["training.dtype=bf16"], "use training.dtype=fp32"),
        (["algorithm.loss_type=hinge"], "sigmoid, ipo"),
        (["reward.score_position=last"], "eos, before_eos"),
        (
            ["actor_rollout_ref.actor_rollout.tensor_model_parallel_size=4", "resource_pool.actor_rollout=4"],
            "TP=4 must divide",
        ),
        (["reward.function=nocolon"], "module:callable"),
        (["training.train_iters"], "not key=value"),
        (["resource_pool.colocate=[ref]"], "role ref (TP=1, PP=1) needs the actor's layout (TP=2, PP=1)"),
        (["resource_pool.colocate=[ref,ref]"], "'ref' twice"),
        (["resource_pool.colocate=[actor_rollout]"], "'actor_rollout' cannot be colocated"),
        (["resource_pool.colocate=[reward]", "reward.function=mymod:fn"], "no reward model is built"),
    ],
)
def test_validation_messages(overrides, fragment):
    with pytest.raises(ValueError) as e:
        load_config(TINY, overrides)
    assert fragment in str(e.value)


def test_reward_function_drops_reward_role():
    from common.config.roles import roles_in_use

    cfg = load_config(TINY, ["reward.function=mymod:fn"])
    assert roles_in_use(cfg) == ("actor_rollout", "ref")
    assert cfg.reward.model is None


def test_colocated_roles_take_the_actors_ranks():
    from common.config.roles import data_parallel_size, placed_roles, roles_in_use

    tp2 = ["actor_rollout_ref.ref.tensor_model_parallel_size=2", "reward.tensor_model_parallel_size=2"]
    cfg = load_config(TINY, ["resource_pool.colocate=[ref,reward]", *tp2])
    assert roles_in_use(cfg) == ("actor_rollout", "ref", "reward")
    assert placed_roles(cfg) == {"actor_rollout": 2}  # no devices of their own
    assert data_parallel_size(cfg, "ref") == data_parallel_size(cfg, "reward") == 1
    cfg = load_config(TINY, ["resource_pool.colocate=[reward]", "reward.tensor_model_parallel_size=2"])
    assert placed_roles(cfg) == {"actor_rollout": 2, "ref": 1}


def test_unknown_key_in_a_recipe_file(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text(TINY.read_text() + "\nalgorithm_extra: 1\n")
    with pytest.raises(ValueError, match=r"algorithm_extra.*unknown key.*nearest valid keys: algorithm"):
        load_config(bad)
