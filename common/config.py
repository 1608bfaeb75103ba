"""Typed, strict recipe configuration.

A recipe's frozen ``config.yaml`` plus command-line ``key=value`` overrides are merged onto the
schema below. Sections follow the original system (``training``, ``actor_rollout_ref.actor_rollout``,
``actor_rollout_ref.ref``, ``reward``, ``algorithm``, ``resource_pool``) plus ``model`` (the Llama-3
architecture used when a role starts from random weights).

Three rules, all enforced here, before any model is built:
- an unknown key is an error that names the key and the nearest valid keys;
- a role section overrides ``training`` for the keys they share (``None`` in a role = inherit);
  the resolved values are written back, so ``config.yaml`` in the run folder is fully explicit;
- every cross-field constraint (devices vs TP x PP x DP, batch divisibility, lengths, sampling
  ranges) is checked with a message that says how to fix it.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, List, Optional

import yaml
from omegaconf import DictConfig, OmegaConf

from common.arch import LlamaArch, check_arch, layout_problem
from common.dtypes import DTYPE_NAMES

DECODE_MODES = ("auto", "eager", "static", "graph")  # common.generation.generate(decode=...)

# --------------------------------------------------------------------------------------- schema


def _tiny_arch() -> LlamaArch:
    """The ``model`` default: a 2-layer Llama-3 with the real vocabulary (recipes set their own)."""
    return LlamaArch(
        num_layers=2, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4, num_query_groups=2,
        vocab_size=128256, max_position_embeddings=8192,
    )  # fmt: skip


@dataclass
class TrainingConfig:
    train_iters: int = 10
    global_batch_size: int = 8  # prompts per iteration
    seq_length: int = 512  # prompt + response tokens
    seed: int = 1234
    save_interval: int = 0  # iterations between checkpoints (run folder/checkpoints); 0 = none
    max_restarts: int = 0  # restarts of every role from the last checkpoint after a lost worker (needs save_interval)
    tokenizer_name_or_path: str = "assets/llama3_tokenizer"
    device: str = "auto"  # auto | cpu | cuda | npu
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (CPU: fp32 only)
    micro_batch_size: int = 4  # prompts (pairs) per forward/backward, per data-parallel rank
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1


@dataclass
class ActorRolloutConfig:
    load: Optional[str] = None  # None: random init from `model` and training.seed
    data_path: str = "data/prompts/tiny_prompts.jsonl"
    max_prompt_length: int = 256
    n_samples_per_prompt: int = 2  # >2: best vs worst
    temperature: float = 0.7
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    # decode steps: auto (a CUDA graph per generation on CUDA with TP 1, eager on CPU, else static) | eager | static | graph
    decode: str = "auto"
    missing_eos_penalty: Optional[float] = None
    no_shuffle: bool = True
    fixed_responses: Optional[str] = None  # JSONL of stored responses replacing generation
    # optimizer (Megatron Adam, decoupled weight decay)
    lr: float = 1e-7
    min_lr: float = 0.0
    lr_decay_style: str = "constant"  # constant | linear | cosine
    lr_warmup_fraction: float = 0.0
    weight_decay: float = 0.0
    clip_grad: float = 0.0  # 0 = no clipping
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    # optimizer steps per iteration = ppo_epochs * global_batch_size / ppo_mini_batch_size
    ppo_epochs: int = 1
    ppo_mini_batch_size: Optional[int] = None  # None: global_batch_size
    # generation on dedicated ranks: `generate_devices` of the resource_pool.actor_rollout devices
    # only sample (PP=1, their own TP) and receive the trained weights before every rollout;
    # 0 = the training ranks generate themselves (no copy of the weights at all)
    generate_devices: int = 0
    generate_tensor_model_parallel_size: Optional[int] = None  # None: the actor's TP
    # role overrides of `training` (None = inherit)
    micro_batch_size: Optional[int] = None
    tensor_model_parallel_size: Optional[int] = None
    pipeline_model_parallel_size: Optional[int] = None


@dataclass
class RefConfig:
    load: Optional[str] = None  # None: same weights as the actor's start
    micro_batch_size: Optional[int] = None
    tensor_model_parallel_size: Optional[int] = None
    pipeline_model_parallel_size: Optional[int] = None


@dataclass
class ActorRolloutRefConfig:
    actor_rollout: ActorRolloutConfig = field(default_factory=ActorRolloutConfig)
    ref: RefConfig = field(default_factory=RefConfig)


@dataclass
class RewardConfig:
    load: Optional[str] = None  # None (and no function): random-init reward model, seed training.seed+1
    function: Optional[str] = None  # "module:callable"; when set no reward model is built
    # more "module:callable" terms, and one weight per term (reward model, function, functions);
    # the rules and examples are in common/reward_terms.py
    functions: List[str] = field(default_factory=list)
    weights: Optional[List[float]] = None  # None: every term 1.0
    # the reward model's tokenizer (HF dir); None: reward.load's own when it ships one, else the
    # policy's. A different tokenizer or chat template -> responses re-rendered (common/reward_tokenize.py)
    tokenizer_name_or_path: Optional[str] = None
    score_position: str = "eos"  # eos | before_eos
    model: Optional[LlamaArch] = None  # architecture of a random-init reward model; None = `model`
    micro_batch_size: Optional[int] = None
    tensor_model_parallel_size: Optional[int] = None
    pipeline_model_parallel_size: Optional[int] = None


@dataclass
class AlgorithmConfig:
    beta: float = 0.1
    loss_type: str = "sigmoid"  # sigmoid | ipo


@dataclass
class ResourcePoolConfig:
    """Devices (ranks on CPU) per role; each role is its own placement group and world."""

    actor_rollout: int = 1
    ref: int = 1
    reward: int = 1
    # Ray resource counting one device per rank; None = the device's own (GPU on cuda, NPU on npu,
    # none on cpu). A CPU run on a cluster whose nodes declare e.g. {"NPU": 8} may set NPU to be
    # placed exactly like a device run (how multi-node placement is tested on one machine).
    device_resource: Optional[str] = None
    # Roles that run inside the actor's training processes instead of their own (``ref``, ``reward``):
    # one process per actor rank holds them all, one after another in each iteration (what verl calls
    # colocated workers). They take the actor's ranks (resource_pool.<role> is not used), need its
    # TP and PP, and use no devices of their own.
    colocate: List[str] = field(default_factory=list)


@dataclass
class RecipeConfig:
    training: TrainingConfig = field(default_factory=TrainingConfig)
    model: LlamaArch = field(default_factory=_tiny_arch)
    actor_rollout_ref: ActorRolloutRefConfig = field(default_factory=ActorRolloutRefConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    resource_pool: ResourcePoolConfig = field(default_factory=ResourcePoolConfig)


ROLES = ("actor_rollout", "ref", "reward")
INHERITED_KEYS = ("micro_batch_size", "tensor_model_parallel_size", "pipeline_model_parallel_size")
CHOICES = {
    "training.device": ("auto", "cpu", "cuda", "npu"),
    "training.dtype": DTYPE_NAMES,
    "actor_rollout_ref.actor_rollout.lr_decay_style": ("constant", "linear", "cosine"),
    "reward.score_position": ("eos", "before_eos"),
    "algorithm.loss_type": ("sigmoid", "ipo"),
}

# ------------------------------------------------------------------------------ strict loading


def _schema_keys(cls: type, prefix: str = "") -> list[str]:
    """All dotted leaf and section keys of a dataclass schema."""
    keys = []
    for f in fields(cls):
        path = f"{prefix}{f.name}"
        keys.append(path)
        inner = f.type if isinstance(f.type, type) else _SECTION_TYPES.get(f.name)
        if inner is not None and is_dataclass(inner):
            keys.extend(_schema_keys(inner, path + "."))
    return keys


# `from __future__ import annotations` makes field types strings; map section names to classes.
_SECTION_TYPES: dict[str, type] = {
    "training": TrainingConfig,
    "model": LlamaArch,
    "actor_rollout_ref": ActorRolloutRefConfig,
    "actor_rollout": ActorRolloutConfig,
    "ref": RefConfig,
    "reward": RewardConfig,
    "algorithm": AlgorithmConfig,
    "resource_pool": ResourcePoolConfig,
}
VALID_KEYS = _schema_keys(RecipeConfig)


def _user_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, (dict, DictConfig)):
        return []
    keys = []
    for k, v in node.items():
        path = f"{prefix}{k}"
        keys.append(path)
        keys.extend(_user_keys(v, path + "."))
    return keys


def check_known_keys(node: Any, source: str) -> None:
    """Raise naming every unknown key of ``node`` and the nearest valid keys."""
    valid = set(VALID_KEYS)
    for key in _user_keys(node):
        if key in valid:
            continue
        near = difflib.get_close_matches(key, VALID_KEYS, n=3, cutoff=0.5)
        leaf = key.rsplit(".", 1)[-1]
        near += [k for k in VALID_KEYS if k.rsplit(".", 1)[-1] == leaf and k not in near]
        hint = f"nearest valid keys: {', '.join(near[:4])}" if near else "see common/config.py"
        raise ValueError(f"config key '{key}' (from {source}): unknown key; {hint}")


def _load_yaml(path: str | Path) -> DictConfig:
    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(e).split())}); fix the file") from None


def load_config(recipe_yaml: str | Path, overrides: list[str] = (), overlay: str | Path | None = None) -> DictConfig:
    """Load a recipe's frozen config, merge an overlay file (e.g. the recipe's ``cpu_scale.yaml``)
    and the dotlist overrides over it, resolve roles, validate."""
    recipe_yaml = Path(recipe_yaml)
    if not recipe_yaml.is_file():
        raise ValueError(f"recipe config {recipe_yaml}: file not found; pass a recipe folder under recipes/")
    user = _load_yaml(recipe_yaml)
    check_known_keys(user, str(recipe_yaml))
    if overlay is not None:
        extra = _load_yaml(overlay)
        check_known_keys(extra, str(overlay))
        user = OmegaConf.merge(user, extra)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override '{item}': not key=value; write e.g. training.train_iters=5")
    dot = OmegaConf.from_dotlist(list(overrides))
    check_known_keys(dot, "command line")
    cfg = OmegaConf.merge(OmegaConf.structured(RecipeConfig), user, dot)
    _resolve_roles(cfg)
    _resolve_paths(cfg)
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _resolve_roles(cfg: DictConfig) -> None:
    """Fill role keys left at None from `training` (a role section overrides `training`)."""
    sections = {
        "actor_rollout": cfg.actor_rollout_ref.actor_rollout,
        "ref": cfg.actor_rollout_ref.ref,
        "reward": cfg.reward,
    }
    for section in sections.values():
        for key in INHERITED_KEYS:
            if section[key] is None:
                section[key] = cfg.training[key]
    actor = cfg.actor_rollout_ref.actor_rollout
    if actor.generate_tensor_model_parallel_size is None:
        actor.generate_tensor_model_parallel_size = actor.tensor_model_parallel_size
    if actor.ppo_mini_batch_size is None:
        actor.ppo_mini_batch_size = cfg.training.global_batch_size
    if cfg.reward.model is None and uses_reward_model(cfg) and cfg.reward.load is None:
        cfg.reward.model = cfg.model.copy()


PROJECT_ROOT = Path(__file__).resolve().parents[1]
PATH_KEYS = (
    "training.tokenizer_name_or_path",
    "actor_rollout_ref.actor_rollout.data_path",
    "actor_rollout_ref.actor_rollout.fixed_responses",
    "actor_rollout_ref.actor_rollout.load",
    "actor_rollout_ref.ref.load",
    "reward.load",
    "reward.tokenizer_name_or_path",
)


def resolve_path(path: str) -> str:
    """Absolute path: as given if it exists from the current directory, else from the project root
    (recipes name shipped files like ``data/prompts/...`` relative to the project)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return str(p.resolve())
    return str((PROJECT_ROOT / p).resolve())


def _resolve_paths(cfg: DictConfig) -> None:
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key)
        if value is not None:
            OmegaConf.update(cfg, key, resolve_path(value))


# ---------------------------------------------------------------------------------- validation


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


def _section_key(role: str) -> str:
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
    """A reward model is built unless a function replaces it (common/reward_terms.py)."""
    r = cfg.reward
    return r.function is None and (r.load is not None or not r.functions)


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
    for key in ("training.micro_batch_size", *(f"{_section_key(r)}.micro_batch_size" for r in ROLES)):
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
        raise ValueError(f"actor_rollout_ref.actor_rollout.decode={actor.decode!r}: use one of {', '.join(DECODE_MODES)}")
    if actor.decode == "graph" and t.device == "cpu":
        raise ValueError("actor_rollout_ref.actor_rollout.decode=graph needs CUDA (a CUDA graph); use auto or eager on CPU")
    if actor.top_k < 0:
        raise ValueError(f"actor_rollout_ref.actor_rollout.top_k={actor.top_k}: must be >= 0; 0 turns it off")
    if not 0 <= actor.generate_devices < cfg.resource_pool.actor_rollout:
        raise ValueError(
            f"actor_rollout_ref.actor_rollout.generate_devices={actor.generate_devices}: must be in "
            f"[0, resource_pool.actor_rollout={cfg.resource_pool.actor_rollout}); the rest of the pool trains"
        )
    if actor.n_samples_per_prompt < 2:
        raise ValueError(
            f"actor_rollout_ref.actor_rollout.n_samples_per_prompt={actor.n_samples_per_prompt}: "
            "Online DPO needs at least 2 responses per prompt"
        )
    if not 0 <= actor.lr_warmup_fraction < 1:
        raise ValueError(f"actor_rollout_ref.actor_rollout.lr_warmup_fraction={actor.lr_warmup_fraction}: must be in [0, 1)")
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
            raise ValueError(f"reward.function={cfg.reward.function!r}: expected 'module:callable', e.g. myrewards:score")
        if cfg.reward.load is not None:
            raise ValueError("reward.function and reward.load are both set; keep one (a function replaces the model)")
    for spec in cfg.reward.functions:
        if ":" not in spec:
            raise ValueError(f"reward.functions: {spec!r} is not 'module:callable'; write e.g. reward.functions=[myrewards:score]")
    if cfg.reward.weights is not None:
        from common.reward_terms import term_names

        names = term_names(cfg.reward)
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
                f"processes; set {_section_key(role)}.tensor_model_parallel_size={atp} and pipeline_model_parallel_size={app}, "
                f"or remove {role} from resource_pool.colocate"
            )


def _validate_role_layout(cfg: DictConfig, role: str) -> None:
    tp, pp = role_parallel_sizes(cfg, role)
    devices = role_devices(cfg, role)
    if tp < 1 or pp < 1:
        raise ValueError(f"role {role}: tensor/pipeline parallel sizes must be >= 1 (got TP={tp}, PP={pp}); "
                         f"set {_section_key(role) if role != 'rollout' else 'actor_rollout_ref.actor_rollout.generate_*'} sizes >= 1")
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
        key = "actor_rollout_ref.actor_rollout.generate_tensor_model_parallel_size" if role == "rollout" else (
            f"{_section_key(role)}.{'tensor' if which == 'tp' else 'pipeline'}_model_parallel_size")
        raise ValueError(f"role {role}: {why}; change {key}")
    if pp > 1 and role == "actor_rollout" and cfg.actor_rollout_ref.actor_rollout.generate_devices == 0:
        raise ValueError(
            f"role {role}: pipeline_model_parallel_size={pp}: the actor generates on its training ranks, "
            "and generation needs PP=1; give it generating ranks (actor_rollout_ref.actor_rollout.generate_devices) "
            "or set its pipeline_model_parallel_size=1"
        )


def max_new_tokens(cfg: DictConfig) -> int:
    return cfg.training.seq_length - cfg.actor_rollout_ref.actor_rollout.max_prompt_length


def optimizer_steps_per_iter(cfg: DictConfig) -> int:
    actor = cfg.actor_rollout_ref.actor_rollout
    return actor.ppo_epochs * math.ceil(cfg.training.global_batch_size / actor.ppo_mini_batch_size)
