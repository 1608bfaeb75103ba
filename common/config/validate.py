"""Cross-field checks of a resolved config, before any model is built; every message says what to change."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from common.config.arch import check_arch, layout_problem
from common.config.roles import (
    data_parallel_size,
    reward_term_names,
    role_devices,
    role_parallel_sizes,
    roles_in_use,
    section_key,
)
from common.config.schema import CHOICES, DECODE_MODES, ROLES


def validate(cfg: DictConfig) -> None:
    """Cross-field checks; every message says what to change."""
    t, actor, alg = cfg.training, cfg.actor_rollout_ref.actor_rollout, cfg.algorithm
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ValueError(f"{key}={value!r}: not one of {', '.join(allowed)}; pick one of them")

    def positive(key: str, value: float) -> None:
        if not value > 0:
            raise ValueError(f"{key}={value}: must be > 0")

    for role in ROLES:  # first: every later rule divides by these
        if (role == "reward" and cfg.reward.function is not None) or role in cfg.resource_pool.colocate:
            continue
        if cfg.resource_pool[role] < 1:
            raise ValueError(f"resource_pool.{role}={cfg.resource_pool[role]}: must be >= 1 (devices of role {role})")
    for key in ("training.micro_batch_size", *(f"{section_key(r)}.micro_batch_size" for r in ROLES)):
        if OmegaConf.select(cfg, key) < 1:
            raise ValueError(f"{key}={OmegaConf.select(cfg, key)}: must be >= 1 (prompts per forward/backward)")
    positive("actor_rollout_ref.actor_rollout.lr", actor.lr)
    positive("training.train_iters", t.train_iters)
    if t.seed < 0:
        raise ValueError(f"training.seed={t.seed}: must be >= 0")
    positive("training.global_batch_size", t.global_batch_size)
    positive("actor_rollout_ref.actor_rollout.temperature", actor.temperature)
    positive("actor_rollout_ref.actor_rollout.max_prompt_length", actor.max_prompt_length)
    positive("actor_rollout_ref.actor_rollout.ppo_epochs", actor.ppo_epochs)
    positive("algorithm.beta", alg.beta)
    if actor.max_prompt_length >= t.seq_length:
        raise ValueError(
            f"actor_rollout_ref.actor_rollout.max_prompt_length={actor.max_prompt_length} must be < "
            f"training.seq_length={t.seq_length} (responses get seq_length - max_prompt_length tokens); "
            "raise seq_length or lower max_prompt_length"
        )
    if t.seq_length > cfg.model.max_position_embeddings:
        raise ValueError(
            f"training.seq_length={t.seq_length} exceeds model.max_position_embeddings="
            f"{cfg.model.max_position_embeddings}; lower seq_length"
        )
    if not 0 < actor.top_p <= 1:
        raise ValueError(f"actor_rollout_ref.actor_rollout.top_p={actor.top_p}: must be in (0, 1]; 1.0 turns it off")
    if actor.decode not in DECODE_MODES:
        raise ValueError(
            f"actor_rollout_ref.actor_rollout.decode={actor.decode!r}: use one of {', '.join(DECODE_MODES)}"
        )
    if actor.decode == "graph" and t.device == "cpu":
        raise ValueError(
            "actor_rollout_ref.actor_rollout.decode=graph needs CUDA (a CUDA graph); use auto or eager on CPU"
        )
    if actor.top_k < 0:
        raise ValueError(f"actor_rollout_ref.actor_rollout.top_k={actor.top_k}: must be >= 0; 0 turns it off")
    if not 0 <= actor.generate_devices < cfg.resource_pool.actor_rollout:
        raise ValueError(
            f"actor_rollout_ref.actor_rollout.generate_devices={actor.generate_devices}: must be in "
            f"[0, resource_pool.actor_rollout={cfg.resource_pool.actor_rollout}); the rest of the pool trains"
        )
    if actor.staleness not in (0, 1):
        raise ValueError(
            f"actor_rollout_ref.actor_rollout.staleness={actor.staleness}: use 0 (generate, then train) or 1 "
            "(generate the next iteration's responses while this one trains)"
        )
    if actor.staleness and actor.generate_devices == 0:
        raise ValueError(
            "actor_rollout_ref.actor_rollout.staleness=1 needs dedicated generating ranks to overlap with training: "
            "set actor_rollout_ref.actor_rollout.generate_devices=K (K of resource_pool.actor_rollout's devices), "
            "or staleness=0"
        )
    if actor.staleness and actor.fixed_responses:
        raise ValueError(
            "actor_rollout_ref.actor_rollout.staleness=1 with fixed_responses: stored responses are not generated, "
            "so there is nothing to overlap; set staleness=0"
        )
    if actor.n_samples_per_prompt < 2:
        raise ValueError(
            f"actor_rollout_ref.actor_rollout.n_samples_per_prompt={actor.n_samples_per_prompt}: "
            "Online DPO needs at least 2 responses per prompt"
        )
    if not 0 <= actor.lr_warmup_fraction < 1:
        raise ValueError(
            f"actor_rollout_ref.actor_rollout.lr_warmup_fraction={actor.lr_warmup_fraction}: must be in [0, 1)"
        )
    if actor.min_lr > actor.lr:
        raise ValueError(f"actor_rollout_ref.actor_rollout.min_lr={actor.min_lr} > lr={actor.lr}; lower min_lr")
    if t.max_restarts < 0 or (t.max_restarts > 0 and t.save_interval <= 0):
        raise ValueError(
            f"training.max_restarts={t.max_restarts} with training.save_interval={t.save_interval}: a restart resumes "
            "from the last checkpoint; set save_interval > 0 (or max_restarts=0), max_restarts >= 0"
        )
    if t.device == "cpu" and t.dtype != "fp32":
        raise ValueError(
            f"training.dtype={t.dtype} on training.device=cpu: bf16/fp16 matmuls are ~500x slower on CPU; "
            "use training.dtype=fp32"
        )
    if cfg.reward.function is not None:
        if ":" not in cfg.reward.function:
            raise ValueError(
                f"reward.function={cfg.reward.function!r}: expected 'module:callable', e.g. myrewards:score"
            )
        if cfg.reward.load is not None:
            raise ValueError("reward.function and reward.load are both set; keep one (a function replaces the model)")
    for spec in cfg.reward.functions:
        if ":" not in spec:
            raise ValueError(
                f"reward.functions: {spec!r} is not 'module:callable'; write e.g. reward.functions=[myrewards:score]"
            )
    if cfg.reward.function_retries < 0:
        raise ValueError(
            f"reward.function_retries={cfg.reward.function_retries}: must be >= 0 (extra calls after a reward function raises)"
        )
    if cfg.reward.weights is not None:
        names = reward_term_names(cfg.reward)
        if len(cfg.reward.weights) != len(names):
            raise ValueError(
                f"reward.weights={list(cfg.reward.weights)}: {len(cfg.reward.weights)} weights for {len(names)} reward terms "
                f"({', '.join(names)}); give one weight per term, in that order"
            )
    check_arch(cfg.model, "model")
    if cfg.reward.model is not None:
        check_arch(cfg.reward.model, "reward.model")
    _validate_colocate(cfg)
    for role in roles_in_use(cfg):
        _validate_role_layout(cfg, role)
    gbs = t.global_batch_size
    mini = actor.ppo_mini_batch_size
    dp = data_parallel_size(cfg, "actor_rollout")
    if gbs % mini:
        raise ValueError(
            f"training.global_batch_size={gbs} is not a multiple of "
            f"actor_rollout_ref.actor_rollout.ppo_mini_batch_size={mini}; make it one"
        )
    if mini % (dp * actor.micro_batch_size):
        raise ValueError(
            f"actor_rollout_ref.actor_rollout.ppo_mini_batch_size={mini} is not a multiple of "
            f"data-parallel size {dp} x micro_batch_size {actor.micro_batch_size}; "
            "change micro_batch_size, the mini batch or resource_pool.actor_rollout"
        )
    for role in roles_in_use(cfg):
        dp_role = data_parallel_size(cfg, role)
        if gbs % dp_role:
            raise ValueError(
                f"training.global_batch_size={gbs} is not divisible by the data-parallel size {dp_role} of "
                f"role {role} (resource_pool.{role} / (TP x PP)); every data-parallel rank needs its own slice"
            )


def _validate_colocate(cfg: DictConfig) -> None:
    """``resource_pool.colocate``: ref and/or reward, each in use, with the actor's TP and PP (their
    processes share one distributed world and one Megatron parallel state)."""
    colocate = list(cfg.resource_pool.colocate)
    for role in colocate:
        if role not in ("ref", "reward") or colocate.count(role) > 1:
            raise ValueError(
                f"resource_pool.colocate={colocate}: {role!r} {'twice' if role in ('ref', 'reward') else 'cannot be colocated'}; "
                "list ref and/or reward once each (they then run in the actor's training processes)"
            )
        if role not in roles_in_use(cfg):
            raise ValueError(
                f"resource_pool.colocate={colocate}: no reward model is built (a reward function replaces it); remove reward from the list"
            )
        if role_parallel_sizes(cfg, role) != role_parallel_sizes(cfg, "actor_rollout"):
            (tp, pp), (atp, app) = role_parallel_sizes(cfg, role), role_parallel_sizes(cfg, "actor_rollout")
            raise ValueError(
                f"resource_pool.colocate: role {role} (TP={tp}, PP={pp}) needs the actor's layout (TP={atp}, PP={app}) to run in its "
                f"processes; set {section_key(role)}.tensor_model_parallel_size={atp} and pipeline_model_parallel_size={app}, "
                f"or remove {role} from resource_pool.colocate"
            )


def _validate_role_layout(cfg: DictConfig, role: str) -> None:
    tp, pp = role_parallel_sizes(cfg, role)
    devices = role_devices(cfg, role)
    if tp < 1 or pp < 1:
        raise ValueError(
            f"role {role}: tensor/pipeline parallel sizes must be >= 1 (got TP={tp}, PP={pp}); "
            f"set {section_key(role) if role != 'rollout' else 'actor_rollout_ref.actor_rollout.generate_*'} sizes >= 1"
        )
    if devices < 1 or devices % (tp * pp):
        what = {
            "actor_rollout": "resource_pool.actor_rollout - generate_devices",
            "rollout": "actor_rollout_ref.actor_rollout.generate_devices",
        }.get(role, f"resource_pool.{role}")
        raise ValueError(
            f"{what}={devices} is not a positive multiple of TP x PP = {tp} x {pp} = {tp * pp} "
            f"for role {role}; make it {tp * pp} x (data-parallel size)"
        )
    arch = cfg.reward.model if role == "reward" and cfg.reward.model is not None else cfg.model
    problem = layout_problem(arch, tp, pp)
    if problem:
        which, why = problem
        key = (
            "actor_rollout_ref.actor_rollout.generate_tensor_model_parallel_size"
            if role == "rollout"
            else (f"{section_key(role)}.{'tensor' if which == 'tp' else 'pipeline'}_model_parallel_size")
        )
        raise ValueError(f"role {role}: {why}; change {key}")
    if pp > 1 and role == "actor_rollout" and cfg.actor_rollout_ref.actor_rollout.generate_devices == 0:
        raise ValueError(
            f"role {role}: pipeline_model_parallel_size={pp}: the actor generates on its training ranks, "
            "and generation needs PP=1; give it generating ranks (actor_rollout_ref.actor_rollout.generate_devices) "
            "or set its pipeline_model_parallel_size=1"
        )
