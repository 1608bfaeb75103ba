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
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from omegaconf import DictConfig

from common.config.arch import LlamaArch
from common.config.dtypes import DTYPE_NAMES

DECODE_MODES = ("auto", "eager", "static", "graph")  # common.generate.generation.generate(decode=...)

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
    load: str | None = None  # None: random init from `model` and training.seed
    data_path: str = "data/prompts/tiny_prompts.jsonl"
    max_prompt_length: int = 256
    n_samples_per_prompt: int = 2  # >2: best vs worst
    temperature: float = 0.7
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    # decode steps: auto (a CUDA graph per generation on CUDA with TP 1, eager on CPU, else static) | eager | static | graph
    decode: str = "auto"
    missing_eos_penalty: float | None = None
    no_shuffle: bool = True
    fixed_responses: str | None = None  # JSONL of stored responses replacing generation
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
    ppo_mini_batch_size: int | None = None  # None: global_batch_size
    # generation on dedicated ranks: `generate_devices` of the resource_pool.actor_rollout devices
    # only sample (PP=1, their own TP) and receive the trained weights before every rollout;
    # 0 = the training ranks generate themselves (no copy of the weights at all)
    generate_devices: int = 0
    generate_tensor_model_parallel_size: int | None = None  # None: the actor's TP
    # 1: the generating ranks sample iteration k+1's responses while the actor takes step k, so
    # iteration k+1 trains on the policy after step k-1 (one step off-policy); needs generate_devices > 0
    staleness: int = 0
    # role overrides of `training` (None = inherit)
    micro_batch_size: int | None = None
    tensor_model_parallel_size: int | None = None
    pipeline_model_parallel_size: int | None = None


@dataclass
class RefConfig:
    load: str | None = None  # None: same weights as the actor's start
    micro_batch_size: int | None = None
    tensor_model_parallel_size: int | None = None
    pipeline_model_parallel_size: int | None = None


@dataclass
class ActorRolloutRefConfig:
    actor_rollout: ActorRolloutConfig = field(default_factory=ActorRolloutConfig)
    ref: RefConfig = field(default_factory=RefConfig)


@dataclass
class RewardConfig:
    load: str | None = None  # None (and no function): random-init reward model, seed training.seed+1
    function: str | None = None  # "module:callable"; when set no reward model is built
    # more "module:callable" terms, and one weight per term (reward model, function, functions);
    # the rules and examples are in common/reward/terms.py
    functions: list[str] = field(default_factory=list)
    weights: list[float] | None = None  # None: every term 1.0
    function_retries: int = 0  # calls again after a reward function raises (1, 2, 4 ... s apart): scorers on a service
    # the reward model's tokenizer (HF dir); None: reward.load's own when it ships one, else the
    # policy's. A different tokenizer or chat template -> responses re-rendered (common/reward/tokenize.py)
    tokenizer_name_or_path: str | None = None
    score_position: str = "eos"  # eos | before_eos
    model: LlamaArch | None = None  # architecture of a random-init reward model; None = `model`
    micro_batch_size: int | None = None
    tensor_model_parallel_size: int | None = None
    pipeline_model_parallel_size: int | None = None


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
    device_resource: str | None = None
    # Roles that run inside the actor's training processes instead of their own (``ref``, ``reward``):
    # one process per actor rank holds them all, one after another in each iteration (what verl calls
    # colocated workers). They take the actor's ranks (resource_pool.<role> is not used), need its
    # TP and PP, and use no devices of their own.
    colocate: list[str] = field(default_factory=list)


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
        hint = f"nearest valid keys: {', '.join(near[:4])}" if near else "see common/config/schema.py"
        raise ValueError(f"config key '{key}' (from {source}): unknown key; {hint}")
