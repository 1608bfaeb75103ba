"""Translate a MindSpeed-LLM Ray Online DPO config into an overlay of this project's config.

    python -m tools.from_mindspeed configs/rlxf/online_dpo_trainer_llama32_1b.yaml --out mine.yaml
    ./run.sh llama32_1b --overlay mine.yaml

The input is the original's Hydra pair: the trainer file (``defaults: [ model: [llama32-1b] ]``,
``training``, ``actor_rollout_ref.actor_rollout``, ``actor_rollout_ref.ref``, ``reward``, ``algorithm``,
``resource_pool``) and the model files its ``defaults`` name (``--model-dir``, default ``model/`` beside
it). It is read as the original read it (shared/reference/seed-formats.md 1.4): per role
``OmegaConf.merge(model, training, role)`` (role > training > model), a false flag left out (the
flag's default), an absent key at the original's default. Each key is then mapped to this project's
key, dropped with the reason (unused by Online DPO there, NPU-only, a kernel choice) or refused with
an error that names it (not supported here, refused by the original itself, or no key of the
original's configs at all: a typo). Relative paths in the original are relative to where
``ray_gpt.py`` ran: ``--base-dir`` (default: the current directory); the overlay holds absolute ones.

Writes ``--out`` (only after it loads and validates over ``recipes/<--recipe>/config.yaml`` with this
project's own loader) and the key table as JSON (``--table``, default ``<out stem>.keys.json`` beside
it), and prints the table. ``--reference`` prints every key this tool knows as a Markdown table (the
one in docs/from_mindspeed.md). Every error is one ``from_mindspeed: error: ...`` line, exit 2.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

ACTOR = "actor_rollout"
ROLES = {"actor_rollout": "actor_rollout_ref.actor_rollout", "ref": "actor_rollout_ref.ref", "reward": "reward"}
NO = "(none)"  # a Rule's default when the original records none: the key must be set
FLAG_OFF = "false: a false flag is left out of the original's argv, so the flag keeps its default (off)"

# --------------------------------------------------------------------------------- the facts


@dataclass(frozen=True)
class Rule:
    """What becomes of one of the original's arguments (a key of ``training``, a role or a model file).

    ``treatment``: mapped (to ``ours``), implied (this project always behaves so; ``want``, when
    set, is the only value accepted) or dropped (``note`` says why). ``scope``: who reads the key there:
    the actor only (``actor``), every role its own value (``role``) or every role's model (``arch``).
    ``default``: the original's value when the key is absent (``NO``: none; the key must be set)."""

    treatment: str
    ours: str = ""
    note: str = ""
    scope: str = "actor"
    default: Any = NO
    want: Any = NO
    absent: str = ""  # for the reference table, when "must be set" is conditional


def _mapped(ours: str, note: str = "", default: Any = NO, scope: str = "actor", absent: str = "") -> Rule:
    return Rule("mapped", ours, note, scope, default, absent=absent)


def _implied(note: str, want: Any = NO, default: Any = NO, scope: str = "actor") -> Rule:
    return Rule("implied", "", note, scope, default, want)


def _dropped(note: str, scope: str = "actor") -> Rule:
    return Rule("dropped", "", note, scope)


A = "actor_rollout_ref.actor_rollout"
DOUBLED = (
    "the same number in both: for ray_online_dpo the original doubles it to sequences ({doubling}), and this "
    "project counts it in prompts (a pair of 2 sequences each), so {value} means {sequences} sequences in both"
)
UNUSED_PPO = "PPO's; unused by the online-DPO loss"
KERNEL = "a kernel or precision switch of Megatron's fused paths; the model's math is the same here"
NPU_ONLY = "NPU-only fused kernel (MindSpeed); the model's math is the same here"
LLAMA3 = "must be set with rope_scaling_type llama3"
PPO_CRITIC = "PPO's critic (value model): the online-DPO trainer builds none"

# The arguments of the original's rlxf configs (seed-formats.md 1.1-1.3: the 1B online-DPO file, the
# 8B PPO file, the model files) and the ones its online-DPO path reads with a default (1.5), each with
# its treatment. These are the only keys accepted in ``training``, a role section or a model file.
RULES: dict[str, Rule] = {
    # the run
    "stage": _implied(
        "must be ray_online_dpo (the online-DPO trainer); another stage is refused", want="ray_online_dpo"
    ),
    "global_batch_size": _mapped("training.global_batch_size", "prompts per iteration in both; 2 responses each"),
    "seq_length": _mapped("training.seq_length", "prompt + response tokens in both"),
    "train_iters": _mapped("training.train_iters"),
    "save_interval": _mapped(
        "training.save_interval",
        "absent there: no checkpoints (0 here); the trained actor goes to the run folder's final/ at the end either way",
        default=0,
    ),
    "seed": _mapped("training.seed", "Megatron's default 1234 is this project's too", default=1234),
    "tokenizer_type": _implied(
        "must be PretrainedFromHF: this project loads Hugging Face tokenizers", want="PretrainedFromHF"
    ),
    "tokenizer_name_or_path": _mapped("training.tokenizer_name_or_path", "absolute (relative paths from --base-dir)"),
    "bf16": _mapped("training.dtype", "bf16; fp16 -> fp16; neither -> fp32 (one precision for every role here)", False),
    "fp16": _mapped("training.dtype", "fp16; the loss scale starts at this project's own value", False),
    "distributed_backend": _dropped(
        "the backend follows the device here (NCCL on CUDA, HCCL on NPU, gloo on CPU); the original patched nccl to hccl"
    ),
    "no_shared_storage": _dropped("where Megatron builds its dataset index cache; the driver reads the prompts here"),
    "no_load_optim": _implied(
        "a role's load here brings weights only (--resume restores this project's own checkpoints)"
    ),
    "no_load_rng": _implied(
        "a role's load here brings weights only (--resume restores this project's own checkpoints)"
    ),
    "finetune": _implied("every run here starts at iteration 0 from the loaded weights"),
    "is_instruction_dataset": _implied("the prompts are chat-templated instructions here too"),
    "variable_seq_lengths": _implied("each batch is padded to its own longest sequence here"),
    # every role its own
    "micro_batch_size": _mapped("<role>.micro_batch_size", scope="role"),
    "tensor_model_parallel_size": _mapped("<role>.tensor_model_parallel_size", default=1, scope="role"),
    "pipeline_model_parallel_size": _mapped("<role>.pipeline_model_parallel_size", default=1, scope="role"),
    "load": _mapped(
        "<role>.load",
        "absolute; the original's Megatron checkpoint folder loads as it is, re-sharded to the role's TP/PP",
        default=None,
        scope="role",
    ),
    # the actor: data and generation
    "data_path": _mapped(
        f"{A}.data_path",
        "the indexed dataset's prefix, without _packed (PREFIX_packed_input_ids_document.bin/.idx ...), absolute; "
        "one prefix (a blend of several is refused)",
    ),
    "split": _implied("must give every row to training (e.g. 100,0,0): there is no validation split here"),
    "max_prompt_length": _mapped(
        f"{A}.max_prompt_length",
        "max_new_tokens = seq_length - max_prompt_length in both; a longer prompt is dropped here (the original "
        "truncated it from the right, which can cut off the assistant header)",
        default=512,
    ),
    "pad_to_multiple_of": _dropped(
        "checked: the original refuses a max_new_tokens it does not divide; each batch is padded to its longest response here"
    ),
    "do_sample": _implied(
        "must be true: the two responses of a prompt differ only by sampling", want=True, default=False
    ),
    "use_kv_cache": _implied("generation always uses a KV cache here"),
    "n_samples_per_prompt": _mapped(
        f"{A}.n_samples_per_prompt",
        "the original samples n_samples_per_prompt + 1 responses per prompt for online DPO: 1 -> 2 here; more is "
        "refused (its adjacent-pair split mixes prompts then)",
        default=1,
    ),
    "num_samples_per_step": _dropped(
        "prompts per generate() call there; each generating rank samples its whole share in one call here (batching only)"
    ),
    "temperature": _mapped(f"{A}.temperature", default=0.7),
    "top_k": _dropped("not passed to generate() by the original (top_k 0: off); written as top_k 0 (off)"),
    "top_p": _dropped("not passed to generate() by the original (top_p 0.0: off); written as top_p 1.0 (off here)"),
    "missing_eos_penalty": _mapped(
        f"{A}.missing_eos_penalty",
        "subtracted from the score of a response without EOS; only this one counts (algorithm.missing_eos_penalty "
        "is ignored by the original)",
        default=0.0,
    ),
    "no_shuffle": _mapped(
        f"{A}.no_shuffle", "true: prompts in file order in both; false: shuffled (another order)", False
    ),
    "shuffle": _dropped("not read by the online-DPO path"),
    "shuffle_minibatch": _dropped("order of mini-batches within an iteration; taken in order here"),
    "inference_tensor_model_parallel_size": _dropped(
        "dead in the original: its generating ranks use the actor's TP; written as "
        "generate_tensor_model_parallel_size = the actor's TP"
    ),
    "num_gpus_for_train": _mapped(
        "resource_pool.actor_rollout",
        "train + infer devices = resource_pool.actor_rollout (checked, as the original does)",
    ),
    "num_gpus_for_infer": _mapped(
        f"{A}.generate_devices",
        "devices that only generate (TP = the actor's, PP 1), in both; 0 here: the training ranks generate",
    ),
    # the actor: DPO and the optimizer (Megatron Adam in both)
    "dpo_beta": _mapped("algorithm.beta", default=0.1),
    "dpo_loss_type": _mapped(
        "algorithm.loss_type", "sigmoid or ipo (hinge raises NotImplementedError there)", "sigmoid"
    ),
    "dpo_label_smoothing": _dropped("dead in the original (never read by its loss)"),
    "ppo_mini_batch_size": _mapped(f"{A}.ppo_mini_batch_size"),
    "ppo_epochs": _mapped(
        f"{A}.ppo_epochs", "optimizer steps per iteration = ppo_epochs x global / mini batch, in both"
    ),
    "clip_ratio": _dropped(UNUSED_PPO),
    "entropy_coeff": _dropped(UNUSED_PPO),
    "lr": _mapped(f"{A}.lr"),
    "min_lr": _mapped(f"{A}.min_lr", default=0.0),
    "lr_decay_style": _mapped(
        f"{A}.lr_decay_style",
        "constant, linear or cosine (Megatron's default linear); the schedule counts optimizer steps here",
        "linear",
    ),
    "lr_warmup_fraction": _mapped(f"{A}.lr_warmup_fraction", default=0.0),
    "weight_decay": _mapped(f"{A}.weight_decay", "decoupled, as Megatron's Adam (its default 0.01)", 0.01),
    "clip_grad": _mapped(f"{A}.clip_grad", "global grad-norm clip (Megatron's default 1.0; 0 = off here)", 1.0),
    "adam_beta1": _mapped(f"{A}.adam_beta1", default=0.9),
    "adam_beta2": _mapped(f"{A}.adam_beta2", default=0.999),
    "adam_eps": _mapped(f"{A}.adam_eps", default=1e-8),
    "initial_loss_scale": _dropped("fp16's first loss scale (unused in bf16); this project's fp16 starts at 2^16"),
    "save": _dropped("checkpoints go to the run folder here (checkpoints/, final/; ./run.sh --out DIR)"),
    # PPO's critic (8B PPO file)
    "use_distributed_optimizer": _dropped("shards Adam's state over data-parallel ranks; the same numbers"),
    "cliprange_value": _dropped(PPO_CRITIC),
    "critic_mini_batch_size": _dropped(PPO_CRITIC),
    "critic_update_epochs": _dropped(PPO_CRITIC),
    # the model files
    "num_layers": _mapped("model.num_layers", scope="arch"),
    "hidden_size": _mapped("model.hidden_size", scope="arch"),
    "ffn_hidden_size": _mapped("model.ffn_hidden_size", scope="arch"),
    "num_attention_heads": _mapped("model.num_attention_heads", scope="arch"),
    "group_query_attention": _mapped(
        "model.num_query_groups", "without it Megatron ignores num_query_groups (one KV head per head)", False, "arch"
    ),
    "num_query_groups": _mapped(
        "model.num_query_groups", "KV heads", scope="arch", absent="must be set with group_query_attention"
    ),
    "vocab_size": _mapped(
        "model.vocab_size", "the vocabulary (padding rows dropped on load)", scope="arch", absent="this or the next"
    ),
    "padded_vocab_size": _mapped(
        "model.vocab_size", "the embedding's rows, when vocab_size is absent", scope="arch", absent="this or the last"
    ),
    "make_vocab_size_divisible_by": _dropped(
        "vocabulary padding; the size comes from vocab_size or padded_vocab_size", "arch"
    ),
    "max_position_embeddings": _mapped("model.max_position_embeddings", scope="arch"),
    "position_embedding_type": _implied(
        "must be rope (Megatron's default learned_absolute is refused)", default="learned_absolute", scope="arch"
    ),
    "use_rotary_position_embeddings": _implied("RoPE (sets position_embedding_type rope)", scope="arch"),
    "rotary_base": _mapped("model.rope_theta", "Megatron's default 10000", 10000, "arch"),
    "rotary_percent": _implied("must be 1.0 (RoPE on every head dimension)", want=1.0, default=1.0, scope="arch"),
    "rope_scaling_type": _implied(
        "llama3 -> the four factors below; absent -> model.rope_scaling_factor null; another type is refused",
        default=None,
        scope="arch",
    ),
    "rope_scaling_factor": _mapped("model.rope_scaling_factor", scope="arch", absent=LLAMA3),
    "low_freq_factor": _mapped("model.rope_low_freq_factor", scope="arch", absent=LLAMA3),
    "high_freq_factor": _mapped("model.rope_high_freq_factor", scope="arch", absent=LLAMA3),
    "original_max_position_embeddings": _mapped(
        "model.rope_original_max_position_embeddings", scope="arch", absent=LLAMA3
    ),
    "normalization": _implied("must be RMSNorm", want="RMSNorm", default="LayerNorm", scope="arch"),
    "norm_epsilon": _mapped("model.rms_norm_eps", default=1e-5, scope="arch"),
    "swiglu": _implied("must be true (SwiGLU MLP)", want=True, default=False, scope="arch"),
    "disable_bias_linear": _implied("must be true (no linear biases)", want=True, default=False, scope="arch"),
    "untie_embeddings_and_output_weights": _mapped(
        "model.tie_word_embeddings", "tie_word_embeddings = not untie (absent: tied, as Llama-3.2-1B)", False, "arch"
    ),
    "init_method_std": _mapped("model.init_method_std", "used by random init only", 0.02, "arch"),
    "attention_dropout": _implied(
        "must be 0: no dropout here (Megatron's default, when absent, is 0.1)", want=0.0, default=0.1, scope="arch"
    ),
    "hidden_dropout": _implied(
        "must be 0: no dropout here (Megatron's default, when absent, is 0.1)", want=0.0, default=0.1, scope="arch"
    ),
    "use_mcore_models": _implied(
        "must be true: the models here are Megatron-core GPT models (the legacy model is refused)",
        want=True,
        default=False,
        scope="arch",
    ),
    "sequence_parallel": _dropped(
        "splits activations over TP ranks to save memory (off at TP 1 anyway); the same numbers, not used here", "arch"
    ),
    "use_mc2": _dropped(NPU_ONLY + " (MC2: matmul fused with its collective)", "arch"),
    "use_fused_rmsnorm": _dropped(NPU_ONLY, "arch"),
    "use_fused_swiglu": _dropped(NPU_ONLY, "arch"),
    "use_flash_attn": _dropped("an attention kernel; the device picks this project's (common/model)", "arch"),
    "no_masked_softmax_fusion": _dropped(KERNEL, "arch"),
    "attention_softmax_in_fp32": _dropped(KERNEL, "arch"),
    "no_gradient_accumulation_fusion": _dropped(KERNEL, "arch"),
}
ROLE_SECTION_KEYS = set(RULES) | {"model"}  # a role section also names its model file
TOP_KEYS = ("defaults", "training", "actor_rollout_ref", "critic", "reward", "algorithm", "resource_pool")
ALGORITHM_KEYS = ("gamma", "lam", "adv_estimator", "kl_penalty", "kl_ctrl", "missing_eos_penalty")
KL_CTRL_KEYS = ("type", "kl_coef")
POOL_KEYS = ("actor_rollout", "ref", "reward", "critic")
POOL_NOTE = (
    "devices of the role, one placement group each, as there (a list gives per-node counts: summed); "
    "actor_rollout must be num_gpus_for_train + num_gpus_for_infer (the original refuses otherwise)"
)
ALGORITHM_NOTE = "the online-DPO trainer never reads `algorithm` (PPO's GAE and KL settings)"
SAME_AS_ACTOR = "only the actor's value counts (one value for every role here)"

# ------------------------------------------------------------------------------ reading the files


@dataclass
class Original:
    """The original's trainer file and the models of its ``defaults`` model files, as loaded."""

    main: dict
    models: dict[str, dict]  # model name -> its arguments
    model_files: dict[str, Path]  # model name -> the file that defines it

    def section(self, label: str) -> dict:
        node = self.main
        for part in label.split("."):
            node = (node or {}).get(part) or {}
        return node


def _load(path: Path) -> dict:
    try:
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        raise ValueError(
            f"{path}: not a config the original could read ({' '.join(str(e).split())}); fix the file"
        ) from None
    if not isinstance(node, dict):
        raise ValueError(f"{path}: not a mapping of sections; pass the original's trainer config")
    return node


def _default_models(main: dict, path: Path) -> list[str]:
    """The model names of ``defaults: [ model: [NAME, ...] ]`` (Hydra's model group)."""
    names = []
    for entry in main.get("defaults") or []:
        if entry == "_self_":
            continue
        if not (isinstance(entry, dict) and list(entry) == ["model"]):
            raise ValueError(
                f"{path}: defaults entry {entry!r}: only the model group is read (defaults: [ model: [NAME] ])"
            )
        value = entry["model"]
        names += value if isinstance(value, list) else [value]
    if not names:
        raise ValueError(
            f"{path}: defaults names no model file; the original needs one (defaults: [ model: [llama32-1b] ])"
        )
    return [str(n) for n in names]


def read_original(config: Path, model_dir: Path | None = None) -> Original:
    """The trainer file and its model files, read as Hydra composed them in the original."""
    if not config.is_file():
        raise ValueError(f"{config}: file not found; pass the original's configs/rlxf/online_dpo_trainer_*.yaml")
    main = _load(config)
    model_dir = model_dir if model_dir is not None else config.parent / "model"
    models: dict[str, dict] = {}
    files: dict[str, Path] = {}
    for name in _default_models(main, config):
        path = model_dir / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(
                f"defaults: model file {path} does not exist (the original stops too: Hydra finds no 'model/{name}'); "
                f"pass --model-dir (the folder holding {name}.yaml) or fix defaults"
            )
        for key, value in _load(path).items():
            if not isinstance(value, dict):
                raise ValueError(
                    f"{path}: {key}: not a mapping; a model file holds one key, the model name, over its arguments"
                )
            models[key] = OmegaConf.to_container(OmegaConf.merge(models.get(key, {}), value))
            files[key] = path
    original = Original(main, models, files)
    check_known_keys(original)
    return original


def _unknown(keys, known, where: str) -> None:
    for key in keys:
        if key not in known:
            near = difflib.get_close_matches(str(key), list(known), n=3, cutoff=0.6)
            hint = f" (nearest: {', '.join(near)})" if near else ""
            raise ValueError(
                f"{where}{key}: no such key in MindSpeed-LLM's rlxf configs{hint}; fix the typo or remove it "
                "(the keys its online-DPO and PPO trainer files and model files use: docs/from_mindspeed.md#config-keys)"
            )


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a section (a mapping), got {value!r}; fix the file")
    return value


def check_known_keys(original: Original) -> None:
    """Every key is one of the original's (``RULES`` and the sections' own); the first other one is an error."""
    main = original.main
    _unknown(main, TOP_KEYS, "")
    _unknown(_mapping(main.get("training"), "training"), RULES, "training.")
    _unknown(
        _mapping(main.get("actor_rollout_ref"), "actor_rollout_ref"), ("actor_rollout", "ref"), "actor_rollout_ref."
    )
    for label in (*ROLES.values(), "critic"):
        _unknown(_mapping(original.section(label), label), ROLE_SECTION_KEYS, f"{label}.")
    algorithm = _mapping(main.get("algorithm"), "algorithm")
    _unknown(algorithm, ALGORITHM_KEYS, "algorithm.")
    _unknown(_mapping(algorithm.get("kl_ctrl"), "algorithm.kl_ctrl"), KL_CTRL_KEYS, "algorithm.kl_ctrl.")
    _unknown(_mapping(main.get("resource_pool"), "resource_pool"), POOL_KEYS, "resource_pool.")
    for name, args in original.models.items():
        _unknown(args, RULES, f"{original.model_files[name]}: {name}.")


# --------------------------------------------------------------------------- one role's arguments


@dataclass
class RoleArgs:
    """One role's arguments as the original built its argv: ``values`` without false flags and nulls,
    ``origin`` the section each merged key (those left out too) comes from (``model.<name>``,
    ``training`` or the role's)."""

    model: str
    values: dict[str, Any]
    origin: dict[str, str]
    left_out: dict[str, Any]  # the false flags and nulls


def role_args(original: Original, role: str) -> RoleArgs:
    """``OmegaConf.merge(model, training, role)``, then ``model`` popped (initialize.py l.28-48)."""
    label = ROLES[role]
    section = original.section(label)
    if "model" not in section:
        raise ValueError(
            f"{label}.model: not set; the original needs every role's model (a model file's top-level key); set it"
        )
    name = str(section["model"])
    if name not in original.models:
        raise ValueError(
            f"{label}.model={name!r}: no such model in the defaults' model files (they define: "
            f"{', '.join(sorted(original.models))}); the original stops on it too; add its file to defaults or fix the name"
        )
    sources = [(f"model.{name}", original.models[name]), ("training", original.section("training"))]
    sources.append((label, {k: v for k, v in section.items() if k != "model"}))
    merged = OmegaConf.to_container(OmegaConf.merge(*(OmegaConf.create(s) for _, s in sources)))
    origin = {key: src for src, args in sources for key in args}  # later sources win
    values = {k: v for k, v in merged.items() if v is not False and v is not None}
    return RoleArgs(name, values, origin, {k: v for k, v in merged.items() if k not in values})


# ------------------------------------------------------------------------------------ translation


@dataclass
class Record:
    """What became of one key of one role (or of ``resource_pool``)."""

    status: str  # mapped | default | implied | dropped
    ours: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    value: Any = None  # the original's default, for status "default"


@dataclass
class Row:
    """One row of the key table: an original key (dotted as in its files; model files as
    ``model.<name>.<key>``; None for a setting written for the original's fixed behaviour)."""

    key: str | None
    value: Any
    status: str  # mapped | default | implied | dropped | behaviour
    ours: dict[str, Any]
    note: str


class Translation:
    """The overlay being written and a record of every key read into it."""

    def __init__(self, original: Original, base_dir: Path):
        self.original = original
        self.base_dir = base_dir
        self.args = {role: role_args(original, role) for role in ROLES}
        self.overlay: dict = {}
        self.records: dict[tuple[str, str], Record] = {}
        self.behaviour: list[Row] = []

    def has(self, role: str, key: str) -> bool:
        return key in self.args[role].values

    def where(self, role: str, key: str) -> str:
        """Where ``key`` of ``role`` is set (the section its value comes from), or belongs when absent."""
        rule = RULES[key]
        if key in self.args[role].origin:
            return f"{self.args[role].origin[key]}.{key}"
        if rule.scope == "arch":
            return f"model.{self.args[role].model}.{key}"
        if rule.ours.startswith("training.") or key in ("stage", "tokenizer_type"):
            return f"training.{key}"
        return f"{ROLES[role]}.{key}"

    def read(self, role: str, key: str) -> Any:
        """The role's value of ``key``, or the original's default (recorded), or an error when it has none."""
        if key in self.args[role].values:
            return self.args[role].values[key]
        default = RULES[key].default
        if default == NO:
            raise ValueError(f"{self.where(role, key)}: not set, and the original has no default for it here; set it")
        self.records.setdefault((role, key), Record("default", value=default))
        return default

    def refuse(self, role: str, key: str, problem: str) -> None:
        args = self.args[role]
        if key in args.values:
            shown = f"={args.values[key]!r}"
        elif key in args.left_out:
            shown = f"={args.left_out[key]!r} (left out of argv: the original's default {RULES[key].default!r})"
        else:
            shown = f" absent (the original's default: {RULES[key].default!r})"
        raise ValueError(f"{self.where(role, key)}{shown}: {problem}")

    def set(self, ours: str, value: Any) -> None:
        node = self.overlay
        *parents, leaf = ours.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    def put(self, role: str, keys: list[str], ours: str, value: Any, note: str = "") -> None:
        """Write ``ours`` = ``value``, taken from the role's ``keys``."""
        self.set(ours, value)
        for key in keys:
            record = self.records.setdefault((role, key), Record("mapped"))
            record.status = "default" if record.status == "default" else "mapped"
            record.ours[ours] = value
            if note and note not in record.notes:
                record.notes.append(note)

    def mark(self, role: str, key: str, status: str, note: str = "") -> None:
        record = self.records.setdefault((role, key), Record(status))
        if record.status == "default":  # an absent key keeps its default row, and that row's notes
            return
        record.status = status
        if note and note not in record.notes:
            record.notes.append(note)

    def fixed(self, ours: str, value: Any, note: str) -> None:
        """A setting for the original's fixed behaviour (no key of its configs names it)."""
        self.set(ours, value)
        self.behaviour.append(Row(None, None, "behaviour", {ours: value}, note))

    def path(self, value: str) -> str:
        return str((self.base_dir / Path(str(value)).expanduser()).resolve())


def _int(t: Translation, role: str, key: str) -> int:
    value = t.read(role, key)
    if not isinstance(value, int) or isinstance(value, bool):
        t.refuse(role, key, "not an integer; fix the value")
    return value


def _check_wanted(t: Translation) -> None:
    """Keys with one accepted value (``Rule.want``), for every role that reads them."""
    for key, rule in RULES.items():
        if rule.want == NO:
            continue
        for role in ROLES if rule.scope != "actor" else (ACTOR,):
            if t.read(role, key) != rule.want:
                t.refuse(role, key, f"not supported: {rule.note}")
            t.mark(role, key, "implied")


# the actor's mapped keys with a translation of their own (the others are copied as they are)
SPECIAL = {
    "tokenizer_name_or_path", "data_path", "bf16", "fp16", "n_samples_per_prompt", "max_prompt_length",
    "num_gpus_for_train", "num_gpus_for_infer", "ppo_mini_batch_size",
}  # fmt: skip


def _run_settings(t: Translation) -> None:
    """The actor's keys copied as they are, the paths, the precision."""
    for key, rule in RULES.items():
        if rule.treatment == "mapped" and rule.scope == "actor" and key not in SPECIAL:
            t.put(ACTOR, [key], rule.ours, t.read(ACTOR, key))
    if len(str(t.read(ACTOR, "data_path")).replace(",", " ").split()) != 1:
        t.refuse(ACTOR, "data_path", "not supported: a blend of datasets; merge them into one prefix")
    for key in ("tokenizer_name_or_path", "data_path"):
        t.put(ACTOR, [key], RULES[key].ours, t.path(t.read(ACTOR, key)))
    bf16, fp16 = t.has(ACTOR, "bf16"), t.has(ACTOR, "fp16")
    if bf16 and fp16:
        t.refuse(ACTOR, "fp16", "bf16 and fp16 are both set; keep one")
    dtype = "fp16" if fp16 else "bf16" if t.read(ACTOR, "bf16") else "fp32"  # neither: fp32 (a default row for bf16)
    t.put(ACTOR, ["fp16" if fp16 else "bf16"], "training.dtype", dtype)
    style = t.read(ACTOR, "lr_decay_style")
    if style not in ("constant", "linear", "cosine"):
        t.refuse(
            ACTOR, "lr_decay_style", "not supported: this project decays the learning rate constant, linear or cosine"
        )
    loss = t.read(ACTOR, "dpo_loss_type")
    if loss not in ("sigmoid", "ipo"):
        why = "the original raises NotImplementedError for it" if loss == "hinge" else "not a loss of the original"
        t.refuse(ACTOR, "dpo_loss_type", f"{why}; use sigmoid or ipo")
    interval, iters = _int(t, ACTOR, "save_interval"), _int(t, ACTOR, "train_iters")
    if interval > iters:
        t.mark(ACTOR, "save_interval", "mapped", f"{interval} > train_iters {iters}: no checkpoint in the run, in both")


def _roles(t: Translation) -> None:
    """Each role's micro-batch, TP, PP and weights."""
    for role, label in ROLES.items():
        mbs = _int(t, role, "micro_batch_size")
        doubling = {
            "actor_rollout": "l.149-151",
            "ref": "workers/reference.py l.95",
            "reward": "workers/reward.py l.97",
        }
        note = DOUBLED.format(doubling=f"micro_batch_size*2, {doubling[role]}", value=mbs, sequences=2 * mbs)
        t.put(role, ["micro_batch_size"], f"{label}.micro_batch_size", mbs, note)
        for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
            t.put(role, [key], f"{label}.{key}", _int(t, role, key))
        load = t.read(role, "load")
        note = ""
        if load is None:
            note = {
                "actor_rollout": "absent: random init from model and training.seed, in both",
                "ref": "absent: null here means the actor's starting weights (the original's reference started from random weights)",
                "reward": "absent: a random-init reward model (seed training.seed + 1 here)",
            }[role]
        t.put(role, ["load"], f"{label}.load", None if load is None else t.path(load), note)
    mini = _int(t, ACTOR, "ppo_mini_batch_size")
    note = DOUBLED.format(doubling="ppo_mini_batch_size*2, l.149-151", value=mini, sequences=2 * mini)
    t.put(ACTOR, ["ppo_mini_batch_size"], RULES["ppo_mini_batch_size"].ours, mini, note)


def _architecture(t: Translation, role: str) -> dict[str, tuple[Any, list[str]]]:
    """This project's ``model`` fields from one role's arguments: field -> (value, the keys it came from)."""
    read, has = (lambda key: t.read(role, key)), (lambda key: t.has(role, key))
    if has("use_rotary_position_embeddings"):  # Megatron then sets position_embedding_type rope
        t.mark(role, "use_rotary_position_embeddings", "implied")
    elif read("position_embedding_type") != "rope":
        t.refuse(role, "position_embedding_type", "not supported: this project's models use RoPE (set rope)")
    if has("position_embedding_type"):
        t.mark(role, "position_embedding_type", "implied")
    arch = {
        name: (read(name), [name]) for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads")
    }
    if read("group_query_attention"):
        arch["num_query_groups"] = (read("num_query_groups"), ["group_query_attention", "num_query_groups"])
    else:
        arch["num_query_groups"] = (arch["num_attention_heads"][0], ["num_attention_heads", "group_query_attention"])
        if has("num_query_groups"):
            t.mark(role, "num_query_groups", "dropped", "ignored by Megatron without group_query_attention")
    vocab_key = "vocab_size" if has("vocab_size") else "padded_vocab_size"
    if not has(vocab_key):
        raise ValueError(
            f"model.{t.args[role].model}: neither vocab_size nor padded_vocab_size is set (the original sizes the "
            "embedding from the tokenizer then); set padded_vocab_size to the embedding's rows, e.g. 128256 for Llama 3"
        )
    arch["vocab_size"] = (read(vocab_key), [vocab_key])
    if vocab_key == "vocab_size" and has("padded_vocab_size"):
        t.mark(
            role, "padded_vocab_size", "dropped", "vocab_size is set: the embedding's padding rows are dropped on load"
        )
    arch["max_position_embeddings"] = (read("max_position_embeddings"), ["max_position_embeddings"])
    arch["rope_theta"] = (float(read("rotary_base")), ["rotary_base"])
    scaling = read("rope_scaling_type")
    factors = {
        "rope_scaling_factor": "rope_scaling_factor",
        "rope_low_freq_factor": "low_freq_factor",
        "rope_high_freq_factor": "high_freq_factor",
        "rope_original_max_position_embeddings": "original_max_position_embeddings",
    }
    if scaling == "llama3":
        for ours, key in factors.items():
            value = read(key)
            arch[ours] = (int(value) if ours.endswith("embeddings") else float(value), [key, "rope_scaling_type"])
    elif scaling is None:
        arch["rope_scaling_factor"] = (None, ["rope_scaling_type"])
        for key in factors.values():
            if has(key):
                t.mark(role, key, "dropped", "no effect without rope_scaling_type llama3")
    else:
        t.refuse(role, "rope_scaling_type", "not supported: Llama-3 RoPE scaling (llama3) or none")
    arch["rms_norm_eps"] = (float(read("norm_epsilon")), ["norm_epsilon"])
    untie = read("untie_embeddings_and_output_weights")
    arch["tie_word_embeddings"] = (not untie, ["untie_embeddings_and_output_weights"])
    arch["init_method_std"] = (float(read("init_method_std")), ["init_method_std"])
    return arch


def _models(t: Translation) -> None:
    """The actor's architecture -> ``model``; the reference must have it; the reward model's own only when it differs."""
    archs = {role: _architecture(t, role) for role in ROLES}
    actor = {name: value for name, (value, _) in archs[ACTOR].items()}
    for name, (value, keys) in archs[ACTOR].items():
        t.put(ACTOR, keys, f"model.{name}", value)
    for role in ("ref", "reward"):
        own = {name: value for name, (value, _) in archs[role].items()}
        differ = [name for name in actor if own[name] != actor[name]]
        if not differ:
            for _, keys in archs[role].values():
                for key in keys:
                    t.mark(role, key, "implied", "the actor's architecture")
        elif role == "ref":
            name = differ[0]
            raise ValueError(
                f"actor_rollout_ref.ref.model={t.args['ref'].model!r}: its architecture differs from the actor's "
                f"({name} {own[name]} vs {actor[name]}); not supported: the reference is a copy of the actor here; "
                "name the actor's model"
            )
        else:
            for name, (value, keys) in archs[role].items():
                t.put(role, keys, f"reward.model.{name}", value, "the reward model's own architecture")
    if "model" not in t.overlay.get("reward", {}):
        t.fixed("reward.model", None, "the reward model has the actor's architecture (or its weights' own)")


def _generation(t: Translation) -> None:
    """Sampling and the response length, with the original's own refusals."""
    n = _int(t, ACTOR, "n_samples_per_prompt")
    if n != 1:
        t.refuse(
            ACTOR,
            "n_samples_per_prompt",
            "not supported: the original pairs adjacent responses, which mixes prompts past 1",
        )
    t.put(ACTOR, ["n_samples_per_prompt"], RULES["n_samples_per_prompt"].ours, 2)
    seq, prompt = _int(t, ACTOR, "seq_length"), _int(t, ACTOR, "max_prompt_length")
    new = seq - prompt
    t.put(
        ACTOR,
        ["max_prompt_length"],
        RULES["max_prompt_length"].ours,
        prompt,
        f"max_new_tokens = {seq} - {prompt} = {new}",
    )
    if t.has(ACTOR, "pad_to_multiple_of"):
        pad = _int(t, ACTOR, "pad_to_multiple_of")
        if pad < 1 or new % pad:
            t.refuse(
                ACTOR,
                "pad_to_multiple_of",
                f"max_new_tokens = seq_length {seq} - max_prompt_length {prompt} = {new} is not a multiple of it; "
                "the original refuses this config; make max_new_tokens a multiple of pad_to_multiple_of",
            )
        t.mark(ACTOR, "pad_to_multiple_of", "dropped", f"checked: {new} % {pad} == 0")
    if t.has(ACTOR, "split"):
        parts = str(t.read(ACTOR, "split")).replace("/", ",").split(",")
        try:
            rest = [float(p) for p in parts[1:]]
        except ValueError:
            rest = [1.0]
        if any(rest):
            t.refuse(
                ACTOR,
                "split",
                "not supported: every prompt trains here (no validation or test part); prepare only the training rows",
            )
    t.fixed(f"{A}.top_k", 0, "the original passes no top_k to generate(): 0, off (as here)")
    t.fixed(f"{A}.top_p", 1.0, "the original passes no top_p to generate(): 0.0, off there; 1.0 is off here")
    missing = t.read(ACTOR, "missing_eos_penalty")
    ignored = t.original.section("algorithm").get("missing_eos_penalty")
    if ignored is not None and ignored != missing:
        t.mark(
            ACTOR,
            "missing_eos_penalty",
            "mapped",
            f"not algorithm.missing_eos_penalty={ignored}, which the original ignores",
        )


def _placement(t: Translation) -> None:
    """``resource_pool.X: [devices per node]`` and the actor's split into training and generating devices."""
    pool = t.original.section("resource_pool")
    devices = {}
    for name in ROLES:
        if name not in pool:
            raise ValueError(
                f"resource_pool.{name}: not set; the original places every role from its pool ([devices per node]); set it"
            )
        value = pool[name]
        counts = value if isinstance(value, list) else [value]
        if not counts or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise ValueError(f"resource_pool.{name}={value!r}: expected process counts per node, e.g. [2]; fix it")
        devices[name] = sum(counts)
        t.put("resource_pool", [name], f"resource_pool.{name}", devices[name], POOL_NOTE.split("; ")[0])
    train, infer = _int(t, ACTOR, "num_gpus_for_train"), _int(t, ACTOR, "num_gpus_for_infer")
    if devices[ACTOR] != train + infer:
        raise ValueError(
            f"resource_pool.actor_rollout={pool[ACTOR]!r} ({devices[ACTOR]} devices) is not num_gpus_for_train {train} + "
            f"num_gpus_for_infer {infer} = {train + infer}: the original refuses this config (initialize.py l.207-208); "
            "make the pool the sum"
        )
    t.put(ACTOR, ["num_gpus_for_train"], "resource_pool.actor_rollout", devices[ACTOR])
    t.put(ACTOR, ["num_gpus_for_infer"], RULES["num_gpus_for_infer"].ours, infer)
    tp = t.read(ACTOR, "tensor_model_parallel_size")
    note = "the generating ranks use the actor's TP (and PP 1), in both"
    t.put(ACTOR, ["tensor_model_parallel_size"], f"{A}.generate_tensor_model_parallel_size", tp, note)
    t.fixed("resource_pool.colocate", [], "every role on devices of its own, as in the original")


def _reward_behaviour(t: Translation) -> None:
    """The reward section's keys that no key of the original names: its fixed behaviour."""
    t.fixed(
        "reward.score_position",
        "eos",
        "the original reads the score at the response's first EOS (its last token when none)",
    )
    t.fixed("reward.function", None, "a reward model, no reward function")
    t.fixed("reward.functions", [], "a reward model, no reward function")
    t.fixed("reward.weights", None, "a reward model, no reward function")
    t.fixed("reward.tokenizer_name_or_path", None, "the reward model scores the actor's token ids, as in the original")


def _the_rest(t: Translation) -> None:
    """Every other key of every role: dropped or implied by its rule, or the actor's alone."""
    for role, args in t.args.items():
        for key in args.values:
            if (role, key) in t.records:
                continue
            rule = RULES[key]
            if rule.treatment in ("dropped", "implied"):
                t.mark(role, key, rule.treatment)
            else:
                assert role != ACTOR and rule.scope == "actor", f"no translation of {role}.{key}"
                t.mark(role, key, "dropped", SAME_AS_ACTOR)


def translate(original: Original, base_dir: Path) -> tuple[dict, list[Row]]:
    """The overlay (nested dict of this project's keys) and the table of every key."""
    t = Translation(original, base_dir)
    _check_wanted(t)
    _run_settings(t)
    _roles(t)
    _models(t)
    _generation(t)
    _placement(t)
    _reward_behaviour(t)
    _the_rest(t)
    return t.overlay, _rows(t)


# ---------------------------------------------------------------------------------------- the table


def _combine(t: Translation, pairs: list[tuple[str, str]], key: str) -> tuple[str, dict, str]:
    """Status, our keys and note of one source row read by several roles."""
    records = [t.records[p] for p in pairs]
    statuses = [r.status for r in records]
    status = next(s for s in ("mapped", "default", "implied", "dropped") if s in statuses)
    ours: dict[str, Any] = {}
    notes: list[str] = []
    rule = RULES.get(key)
    if rule is not None and rule.note and (rule.treatment == status or status == "default"):
        notes.append(rule.note)
    for r in records:
        if r.status == status:
            ours.update(r.ours)
            notes += [n for n in r.notes if n not in notes]
    return status, ours, "; ".join(notes)


def _source_row(t: Translation, label: str, key: str, value: Any) -> Row:
    if label == "critic" or label == "resource_pool" and key == "critic":
        return Row(f"{label}.{key}", value, "dropped", {}, PPO_CRITIC)
    if label.startswith("algorithm"):
        note = ALGORITHM_NOTE
        if key == "missing_eos_penalty":
            note += f"; only {A}.missing_eos_penalty counts there (here: {t.read(ACTOR, 'missing_eos_penalty')})"
        return Row(f"{label}.{key}", value, "dropped", {}, note)
    if label == "resource_pool":
        status, ours, note = _combine(t, [("resource_pool", key)], key)
        return Row(f"{label}.{key}", value, status, ours, note)
    if key == "model" and label in ROLES.values():
        return Row(f"{label}.{key}", value, "implied", {}, f"the role's model file: {t.original.model_files[value]}")
    takers = [role for role, args in t.args.items() if args.origin.get(key) == label and key in args.values]
    readers = [role for role, args in t.args.items() if label in ("training", ROLES[role], f"model.{args.model}")]
    if takers:
        status, ours, note = _combine(t, [(role, key) for role in takers], key)
        if status == "dropped" and ACTOR in readers and ACTOR not in takers and RULES[key].scope == "actor":
            note = f"overridden by {t.args[ACTOR].origin[key]} for the actor, the one role that reads it"
        return Row(f"{label}.{key}", value, status, ours, note)
    winners = [r for r in readers if t.args[r].origin[key] == label]
    if (value is False or value is None) and winners:  # left out of argv: the roles get the key's default
        pairs = [(r, key) for r in winners if (r, key) in t.records]
        status, ours, note = _combine(t, pairs, key) if pairs else ("dropped", {}, RULES[key].note)
        return Row(f"{label}.{key}", value, status, ours, "; ".join(n for n in (FLAG_OFF, note) if n))
    if not readers:
        note = "no role of online DPO names this model"
    else:
        note = "overridden by " + ", ".join(sorted({t.args[r].origin[key] for r in readers}))
    return Row(f"{label}.{key}", value, "dropped", {}, note)


def _sections(original: Original) -> list[tuple[str, dict]]:
    labels = ["training", *ROLES.values(), "critic", "resource_pool"]
    sections = [(label, original.section(label)) for label in labels]
    algorithm = dict(original.section("algorithm"))
    kl_ctrl = algorithm.pop("kl_ctrl", None) or {}
    sections += [("algorithm", algorithm), ("algorithm.kl_ctrl", kl_ctrl)]
    return sections + [(f"model.{name}", args) for name, args in original.models.items()]


def _rows(t: Translation) -> list[Row]:
    files = ", ".join(str(p) for p in sorted(set(t.original.model_files.values())))
    rows = [Row("defaults", t.original.main.get("defaults"), "implied", {}, f"model files read: {files}")]
    for label, section in _sections(t.original):
        rows += [_source_row(t, label, key, value) for key, value in section.items()]
    defaults: dict[str, list[tuple[str, str]]] = {}
    for (role, key), record in t.records.items():
        if record.status == "default" and key not in t.args[role].left_out:  # those are on their own row
            defaults.setdefault(t.where(role, key), []).append((role, key))
    for where, pairs in defaults.items():
        key = pairs[0][1]
        _, ours, note = _combine(t, pairs, key)
        value = t.records[pairs[0]].value
        rows.append(
            Row(where, value, "default", ours, f"absent: the original's default {value!r}; {note}".rstrip("; "))
        )
    return rows + t.behaviour


def _show(value: Any, width: int = 0) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if not width or len(text) <= width else text[: width - 3] + "..."


def format_table(rows: list[Row]) -> str:
    """Fixed-width: original key, its value, status, this project's key=value; the note on the next line."""
    shown = [
        (
            row.key or "-",
            _show(row.value, 28) if row.key else "",
            row.status,
            ", ".join(f"{k}={_show(v)}" for k, v in row.ours.items()),
        )
        for row in rows
    ]
    header = ("original key", "value", "status", "this project")
    widths = [max(len(cells[i]) for cells in [header, *shown]) for i in range(3)]
    lines = []
    for cells, row in [(header, None), *zip(shown, rows)]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells[:3], widths)) + "  " + cells[3])
        if row is not None and row.note:
            lines.append(" " * 6 + row.note)
    return "\n".join(line.rstrip() for line in lines)


def table_json(rows: list[Row], source: dict) -> str:
    keys = [{"key": r.key, "value": r.value, "status": r.status, "ours": r.ours, "note": r.note} for r in rows]
    return json.dumps({"source": source, "keys": keys}, indent=1) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """Every key this tool knows, as a Markdown table (docs/from_mindspeed.md#config-keys)."""
    readers = {"actor": "actor", "role": "each role", "arch": "model"}
    lines = ["| key | read by | when absent | this project | treatment |", "| --- | --- | --- | --- | --- |"]

    def add(key: str, reader: str, absent: str, ours: str, treatment: str, note: str) -> None:
        cells = [
            f"`{key}`",
            reader,
            absent,
            f"`{ours}`" if ours else "",
            treatment + (f": {_cell(note)}" if note else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")

    for key, rule in RULES.items():
        required = rule.default == NO and (rule.treatment == "mapped" or rule.want != NO)
        absent = rule.absent or (
            "must be set" if required else "" if rule.default == NO else f"`{_show(rule.default)}`"
        )
        reader = "" if rule.treatment == "dropped" else readers[rule.scope]
        add(key, reader, absent, rule.ours, rule.treatment, rule.note)
    add(
        "<role>.model",
        "each role",
        "must be set",
        "",
        "implied",
        "the role's model: a top-level key of a `defaults` model file",
    )
    for key in ("gamma", "lam", "adv_estimator", "kl_penalty", "kl_ctrl.type", "kl_ctrl.kl_coef"):
        add(f"algorithm.{key}", "", "", "", "dropped", ALGORITHM_NOTE)
    add(
        "algorithm.missing_eos_penalty",
        "",
        "",
        "",
        "dropped",
        ALGORITHM_NOTE + f"; only {A}.missing_eos_penalty counts",
    )
    for key in ROLES:
        add(f"resource_pool.{key}", "", "must be set", f"resource_pool.{key}", "mapped", POOL_NOTE)
    add("resource_pool.critic", "", "", "", "dropped", PPO_CRITIC)
    add("critic.*", "", "", "", "dropped", PPO_CRITIC)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- the command

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _schema_order(node: dict, prefix: str = "") -> dict:
    """``node`` with its keys in the order of common/config/schema.py (how the recipes' configs read)."""
    from common.config.schema import VALID_KEYS

    rank = {key: i for i, key in enumerate(VALID_KEYS)}
    items = sorted(node.items(), key=lambda kv: rank.get(prefix + kv[0], len(rank)))
    return {k: _schema_order(v, f"{prefix}{k}.") if isinstance(v, dict) else v for k, v in items}


def overlay_text(overlay: dict, header: list[str]) -> str:
    body = yaml.safe_dump(_schema_order(overlay), sort_keys=False, default_flow_style=False)
    return "".join(f"# {line}\n" for line in header) + body


def check_over_recipe(text: str, recipe: str) -> None:
    """Load the overlay over ``recipes/<recipe>/config.yaml`` with the launcher's own loader (no Ray)."""
    from common.config.load import load_config

    config = PROJECT_ROOT / "recipes" / recipe / "config.yaml"
    if not config.is_file():
        raise ValueError(f"--recipe {recipe}: no recipes/{recipe}/config.yaml; name a recipe folder")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overlay.yaml"
        path.write_text(text)
        try:
            load_config(config, overlay=path)
        except ValueError as e:
            raise ValueError(f"the translated config does not load over recipes/{recipe}: {e}") from None


def _run(args: argparse.Namespace) -> int:
    from common.util.atomic_files import write_text

    config, out = Path(args.config).resolve(), Path(args.out)
    base_dir = Path(args.base_dir).resolve()
    original = read_original(config, Path(args.model_dir).resolve() if args.model_dir else None)
    overlay, rows = translate(original, base_dir)
    table = Path(args.table) if args.table else out.with_name(out.stem + ".keys.json")
    files = sorted({str(p) for p in original.model_files.values()})
    header = [
        f"./run.sh {args.recipe} --overlay {out}",
        f"Written by python -m tools.from_mindspeed from the MindSpeed-LLM config {config}",
        f"(model files: {', '.join(files)}); its relative paths resolved from {base_dir}.",
        f"Every key of the original and what became of it: {table} (docs/from_mindspeed.md).",
    ]
    text = overlay_text(overlay, header)
    check_over_recipe(text, args.recipe)
    write_text(out, text)
    source = {"config": str(config), "model_files": files, "base_dir": str(base_dir), "overlay": str(out)}
    write_text(table, table_json(rows, source))
    print(format_table(rows))
    print(f"\nrelative paths of the original resolved from {base_dir} (--base-dir); written as absolute paths")
    print(f"wrote {out} (checked over recipes/{args.recipe}) and {table}")
    print(f"next: ./run.sh {args.recipe} --overlay {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.from_mindspeed",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "config", nargs="?", help="the original's trainer config, e.g. configs/rlxf/online_dpo_trainer_llama32_1b.yaml"
    )
    parser.add_argument("--model-dir", help="the folder of its model files (default: model/ beside CONFIG)")
    parser.add_argument("--out", help="the overlay to write (YAML), for ./run.sh <recipe> --overlay")
    parser.add_argument(
        "--base-dir", default=".", help="where ray_gpt.py ran: relative paths are resolved from it (default: .)"
    )
    parser.add_argument("--table", help="the key table as JSON (default: <out stem>.keys.json beside --out)")
    parser.add_argument(
        "--recipe", default="llama32_1b", help="the recipe the overlay is checked over (default: llama32_1b)"
    )
    parser.add_argument("--reference", action="store_true", help="print every known key as a Markdown table and exit")
    args = parser.parse_args(argv)
    if args.reference:
        sys.stdout.write(reference_markdown())
        return 0
    if not args.config or not args.out:
        parser.error("CONFIG and --out are needed (or --reference)")
    try:
        return _run(args)
    except ValueError as e:  # every problem with the inputs, argparse-style: one line, exit 2
        parser.error(str(e))
    except OSError as e:
        parser.error(f"{e.filename}: {e.strerror}; pick a writable --out (and --table)")


if __name__ == "__main__":
    sys.exit(main())
