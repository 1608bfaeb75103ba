"""Questions about a resolved config's roles: which are in use, where each runs, its layout, its weights."""

from __future__ import annotations

import math

from omegaconf import DictConfig


def role_load(cfg: DictConfig, role: str) -> str | None:
    """The weights a role starts from (None: random init from the config's architecture). The
    reference defaults to the actor's starting weights (with no ``load`` at all both are the same
    seeded init, identical for any TP/PP layout); generating ranks hold the actor's."""
    if role in ("ref", "rollout"):
        own = cfg.actor_rollout_ref.ref.load if role == "ref" else None
        return own or cfg.actor_rollout_ref.actor_rollout.load
    return role_section(cfg, role).load


def role_section(cfg: DictConfig, role: str) -> DictConfig:
    return cfg.reward if role == "reward" else cfg.actor_rollout_ref[role]


def section_key(role: str) -> str:
    return "reward" if role == "reward" else f"actor_rollout_ref.{role}"


def role_devices(cfg: DictConfig, role: str) -> int:
    """Ranks of a role's world; the actor pool is split into training and generating ranks, and a
    colocated role has the actor's training ranks."""
    if role == "actor_rollout" or role in cfg.resource_pool.colocate:
        return cfg.resource_pool.actor_rollout - cfg.actor_rollout_ref.actor_rollout.generate_devices
    if role == "rollout":
        return cfg.actor_rollout_ref.actor_rollout.generate_devices
    return cfg.resource_pool[role]


def placed_roles(cfg: DictConfig) -> dict[str, int]:
    """Roles with processes (and devices) of their own -> their rank count, in placement order;
    colocated roles run in the actor's."""
    return {role: role_devices(cfg, role) for role in roles_in_use(cfg) if role not in cfg.resource_pool.colocate}


def role_parallel_sizes(cfg: DictConfig, role: str) -> tuple[int, int]:
    """(TP, PP) of a role's world."""
    if role == "rollout":
        return cfg.actor_rollout_ref.actor_rollout.generate_tensor_model_parallel_size, 1
    sec = role_section(cfg, role)
    return sec.tensor_model_parallel_size, sec.pipeline_model_parallel_size


def data_parallel_size(cfg: DictConfig, role: str) -> int:
    tp, pp = role_parallel_sizes(cfg, role)
    return role_devices(cfg, role) // (tp * pp)


def uses_reward_model(cfg: DictConfig) -> bool:
    """A reward model is built unless a function replaces it (common/reward/terms.py)."""
    return reward_section_uses_model(cfg.reward)


def reward_section_uses_model(reward: DictConfig) -> bool:
    """The rule of `uses_reward_model`, on the ``reward`` section alone."""
    return reward.function is None and (reward.load is not None or not reward.functions)


def reward_term_names(reward: DictConfig) -> list[str]:
    """The reward terms of a ``reward`` section, in the order of ``reward.weights``."""
    names = ["reward model"] if reward_section_uses_model(reward) else []
    return names + ([reward.function] if reward.function else []) + list(reward.functions)


def roles_in_use(cfg: DictConfig) -> tuple[str, ...]:
    """Worker groups of a run, in placement order: the actor's training ranks, its generating
    ranks ("rollout", when it has any), the reference, and the reward model unless a reward
    function replaces it."""
    roles = ["actor_rollout"]
    if cfg.actor_rollout_ref.actor_rollout.generate_devices > 0:
        roles.append("rollout")
    roles.append("ref")
    if uses_reward_model(cfg):
        roles.append("reward")
    return tuple(roles)


def max_new_tokens(cfg: DictConfig) -> int:
    return cfg.training.seq_length - cfg.actor_rollout_ref.actor_rollout.max_prompt_length


def optimizer_steps_per_iter(cfg: DictConfig) -> int:
    actor = cfg.actor_rollout_ref.actor_rollout
    return actor.ppo_epochs * math.ceil(cfg.training.global_batch_size / actor.ppo_mini_batch_size)
