"""Hugging Face Llama folders: config.json <-> LlamaArch, the HF <-> full-form tensor mapping, reading
(lazily, a rank reads only its shard's tensors) and writing (atomically) a HF model directory.

- **HF**: a Hugging Face directory (config.json + safetensors) of a `LlamaForCausalLM` (policy)
  or a `LlamaForSequenceClassification` with one label (reward model; `score` <-> ScalarHead).
- **full**: Megatron parameter names with model-wide layer indices, TP=1/PP=1 tensors, unpadded
  vocabulary (`hf_to_full` / `full_to_hf`). Tied embeddings have no `output_layer.weight`.

Which HF tensors make each Megatron parameter, and the TP layout, live in common/model/weight_layout.py;
this project's own checkpoint format and the conversions in both directions in common/weights/convert.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from common.model.llama import LlamaArch, RewardModel, load_hf_llama_state_dict
from common.model.weight_layout import hf_full_tensor, megatron_param_names
from common.util.atomic_files import ReplaceCheck, atomic_dir

POLICY_ARCHITECTURE = "LlamaForCausalLM"
REWARD_ARCHITECTURE = "LlamaForSequenceClassification"
EXPORT_MARKER = "odpo_export.json"  # in every HF folder export_hf writes; says "ours, replaceable"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)
_HF_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


# ----------------------------------------------------------------------------------------------
# config.json <-> LlamaArch


def _rope_parameters(cfg: dict) -> tuple[float, dict]:
    """(rope_theta, scaling dict) from either config style: transformers 5 `rope_parameters`,
    or `rope_theta` + `rope_scaling` (transformers 4, Meta's released config.json files)."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    return float(theta), params


def arch_from_hf_config(cfg: dict) -> LlamaArch:
    """The LlamaArch of a Hugging Face Llama config.json (a dict); ValueError if unsupported."""
    model_type = cfg.get("model_type")
    if model_type != "llama":
        raise ValueError(
            f"HF config: model_type {model_type!r} is not supported; this converter handles "
            "Llama-architecture checkpoints (model_type 'llama': Llama 3 / 3.1 / 3.2, SmolLM2)"
        )
    known = (POLICY_ARCHITECTURE, REWARD_ARCHITECTURE)
    unknown = [a for a in cfg.get("architectures") or [] if a not in known]
    if unknown:
        raise ValueError(
            f"HF config: architectures {unknown} not supported; use a {POLICY_ARCHITECTURE} "
            f"(policy) or {REWARD_ARCHITECTURE} with num_labels=1 (reward model)"
        )
    required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [key for key in required if key not in cfg]
    if missing:
        raise ValueError(f"HF config: missing {missing}; is this a Llama config.json?")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise ValueError(f"HF config: {key}=true is not supported (Llama 3 has no linear biases)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"HF config: hidden_act {cfg['hidden_act']!r} not supported; Llama uses 'silu'")
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim")
    if head_dim is not None and head_dim * heads != hidden:
        raise ValueError(
            f"HF config: head_dim {head_dim} * num_attention_heads {heads} != hidden_size {hidden}; "
            "decoupled head sizes are not supported by this converter"
        )
    theta, rope = _rope_parameters(cfg)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = {}
    if rope_type == "llama3":
        scaling = dict(
            rope_scaling_factor=float(rope["factor"]),
            rope_low_freq_factor=float(rope["low_freq_factor"]),
            rope_high_freq_factor=float(rope["high_freq_factor"]),
            rope_original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
        )
    elif rope_type != "default":
        raise ValueError(
            f"HF config: rope type {rope_type!r} not supported; only 'default' and 'llama3' "
            "(Llama 3.1 / 3.2 frequency scaling) are"
        )
    return LlamaArch(
        num_layers=cfg["num_hidden_layers"],
        hidden_size=hidden,
        ffn_hidden_size=cfg["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=cfg.get("num_key_value_heads") or heads,
        vocab_size=cfg["vocab_size"],
        max_position_embeddings=cfg.get("max_position_embeddings", 2048),
        rope_theta=theta,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        init_method_std=float(cfg.get("initializer_range", 0.02)),
        **scaling,
    )


def hf_config_from_arch(arch: LlamaArch, *, reward: bool) -> dict:
    """A Hugging Face config.json dict for `arch` (rope in the `rope_theta` + `rope_scaling`
    style of Meta's releases, which transformers 4 and 5 both read)."""
    rope_scaling = None
    if arch.rope_scaling_factor is not None:
        rope_scaling = {
            "rope_type": "llama3",
            "factor": arch.rope_scaling_factor,
            "low_freq_factor": arch.rope_low_freq_factor,
            "high_freq_factor": arch.rope_high_freq_factor,
            "original_max_position_embeddings": arch.rope_original_max_position_embeddings,
        }
    cfg = {
        "architectures": [REWARD_ARCHITECTURE if reward else POLICY_ARCHITECTURE],
        "model_type": "llama",
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.ffn_hidden_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_query_groups,
        "head_dim": arch.head_dim,
        "vocab_size": arch.vocab_size,
        "max_position_embeddings": arch.max_position_embeddings,
        "rms_norm_eps": arch.rms_norm_eps,
        "rope_theta": arch.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": arch.tie_word_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": arch.init_method_std,
        "use_cache": True,
    }
    if reward:
        cfg.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    return cfg


def is_reward_config(cfg: dict) -> bool:
    """True for a LlamaForSequenceClassification config (which must have one label)."""
    if REWARD_ARCHITECTURE not in (cfg.get("architectures") or []):
        return False
    labels = cfg.get("num_labels", len(cfg.get("id2label") or {0: None}))
    if labels != 1:
        raise ValueError(
            f"HF config: {REWARD_ARCHITECTURE} with {labels} labels; a reward model has exactly one (num_labels=1)"
        )
    return True


def same_arch(a: LlamaArch, b: LlamaArch) -> bool:
    """Equal up to init_method_std (which only matters for random initialisation)."""
    skip = {"init_method_std"}
    fields = [f.name for f in dataclasses.fields(LlamaArch) if f.name not in skip]
    return all(getattr(a, name) == getattr(b, name) for name in fields)


def check_arch(got: LlamaArch, want: LlamaArch, where: str) -> None:
    if not same_arch(got, want):
        diff = {
            f.name: (getattr(got, f.name), getattr(want, f.name))
            for f in dataclasses.fields(LlamaArch)
            if getattr(got, f.name) != getattr(want, f.name)
        }
        raise ValueError(
            f"{where}: architecture differs from the model's ({{field: (checkpoint, model)}}: {diff}); "
            "build the model from the checkpoint's own arch (`arch_from_path`)"
        )


# ----------------------------------------------------------------------------------------------
# Parameter names and the HF <-> full mapping


# ----------------------------------------------------------------------------------------------
# The HF <-> full mapping


def hf_to_full(hf_sd: Mapping, arch: LlamaArch, reward: bool) -> dict[str, torch.Tensor]:
    """HF Llama state dict -> full (TP=1, PP=1) Megatron state dict."""
    hf_to_full_check_keys(hf_sd.keys(), arch, reward)
    full = {n: hf_full_tensor(n, hf_sd, arch, reward) for n in megatron_param_names(arch, reward=reward)}
    return full


def hf_to_full_check_keys(keys, arch: LlamaArch, reward: bool) -> None:
    """Refuse HF tensors the mapping would silently drop (biases, extra heads, wrong kind)."""
    expected = set(full_to_hf_names(arch, reward))
    ignorable = {"lm_head.weight"} if arch.tie_word_embeddings and not reward else set()
    keys = set(keys)
    unused = sorted(k for k in keys if k not in expected | ignorable and "rotary_emb" not in k)
    missing = sorted(expected - keys)
    if unused or missing:
        raise ValueError(
            f"HF Llama weights: unexpected {unused[:5]}, missing {missing[:5]}; the checkpoint is "
            "not a plain Llama of its config.json (biases? extra heads? wrong architectures entry?)"
        )


def full_to_hf_names(arch: LlamaArch, reward: bool) -> list[str]:
    names = ["model.embed_tokens.weight"]
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        names += [
            p + s
            for s in (
                "input_layernorm.weight",
                "self_attn.q_proj.weight",
                "self_attn.k_proj.weight",
                "self_attn.v_proj.weight",
                "self_attn.o_proj.weight",
                "post_attention_layernorm.weight",
                "mlp.gate_proj.weight",
                "mlp.up_proj.weight",
                "mlp.down_proj.weight",
            )
        ]
    names.append("model.norm.weight")
    if reward:
        names.append("score.weight")
    elif not arch.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def full_to_hf(full_sd: Mapping, arch: LlamaArch, reward: bool) -> dict[str, torch.Tensor]:
    """Full (TP=1, PP=1) Megatron state dict -> HF Llama state dict (tensors own their memory,
    as safetensors requires)."""
    hf = {}

    def get(name: str) -> torch.Tensor:
        if name not in full_sd:
            raise ValueError(f"Megatron weights: missing {name!r}; is the checkpoint complete?")
        return full_sd[name]

    hf["model.embed_tokens.weight"] = get("embedding.word_embeddings.weight")
    groups, hidden, head_dim = arch.num_query_groups, arch.hidden_size, arch.head_dim
    q_rows = arch.num_attention_heads // groups * head_dim  # query rows per group
    for i in range(arch.num_layers):
        m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        hf[h + "input_layernorm.weight"] = get(m + "input_layernorm.weight")
        qkv = get(m + "self_attention.linear_qkv.weight").reshape(groups, q_rows + 2 * head_dim, hidden)
        q, k, v = qkv.split([q_rows, head_dim, head_dim], dim=1)  # per group [q_g ; k_g ; v_g]
        hf[h + "self_attn.q_proj.weight"] = q.reshape(-1, hidden).clone()
        hf[h + "self_attn.k_proj.weight"] = k.reshape(-1, hidden).clone()
        hf[h + "self_attn.v_proj.weight"] = v.reshape(-1, hidden).clone()
        hf[h + "self_attn.o_proj.weight"] = get(m + "self_attention.linear_proj.weight")
        hf[h + "post_attention_layernorm.weight"] = get(m + "pre_mlp_layernorm.weight")
        gate, up = get(m + "mlp.linear_fc1.weight").chunk(2, dim=0)
        hf[h + "mlp.gate_proj.weight"] = gate.clone()
        hf[h + "mlp.up_proj.weight"] = up.clone()
        hf[h + "mlp.down_proj.weight"] = get(m + "mlp.linear_fc2.weight")
    hf["model.norm.weight"] = get("decoder.final_layernorm.weight")
    if reward:
        hf["score.weight"] = get("output_layer.weight")
    elif not arch.tie_word_embeddings:
        hf["lm_head.weight"] = get("output_layer.weight")
    return hf


# ----------------------------------------------------------------------------------------------
# Reading a HF directory lazily


# ----------------------------------------------------------------------------------------------
# Reading a HF directory lazily


class HFSafetensors(Mapping):
    """Read-only mapping over a HF directory's safetensors: a tensor is read when asked for, so
    a rank reads only what its shard needs."""

    def __init__(self, hf_dir: str | os.PathLike):
        self.dir = Path(hf_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._files = {k: self.dir / f for k, f in weight_map.items()}
        else:
            files = sorted(self.dir.glob("*.safetensors"))
            if not files:
                raise ValueError(
                    f"HF weights {self.dir}: no *.safetensors files; convert .bin checkpoints with "
                    "transformers (`save_pretrained(dir, safe_serialization=True)`) first"
                )
            from safetensors import safe_open

            self._files = {}
            for path in files:
                with safe_open(path, framework="pt") as f:
                    self._files.update({k: path for k in f.keys()})

    def __getitem__(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self._files[key], framework="pt") as f:
            return f.get_tensor(key)

    def __iter__(self):
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, key) -> bool:
        return key in self._files


def read_hf_config(hf_dir: str | os.PathLike) -> dict:
    path = Path(hf_dir) / "config.json"
    if not Path(hf_dir).is_dir():
        raise ValueError(
            f"HF model {hf_dir}: folder not found; give a local Hugging Face model folder "
            f"(e.g. `.venv/bin/hf download <repo-id> --local-dir {hf_dir}`)"
        )
    if not path.is_file():
        raise ValueError(f"HF model {hf_dir}: no config.json; give a Hugging Face model directory")
    return json.loads(path.read_text())


def load_hf_into_model(model, hf_dir: str | os.PathLike, arch: LlamaArch, reward: bool | None = None) -> None:
    """Load a HF Llama directory into this rank's shards of `model` (policy GPTModel or
    RewardModel), reading only the tensors this TP rank / pipeline stage needs."""
    reward = isinstance(model, RewardModel) if reward is None else reward
    if reward != isinstance(model, RewardModel):
        raise ValueError(f"HF model {hf_dir}: reward={reward} but the model is a {type(model).__name__}")
    cfg = read_hf_config(hf_dir)
    check_arch(arch_from_hf_config(cfg), arch, f"HF model {hf_dir}")
    if reward and not is_reward_config(cfg):
        raise ValueError(
            f"HF model {hf_dir}: the reward model needs a {REWARD_ARCHITECTURE} checkpoint "
            f"(with a `score` head), got architectures {cfg.get('architectures')}"
        )
    load_hf_llama_state_dict(model, HFSafetensors(hf_dir), arch)


# ----------------------------------------------------------------------------------------------
# Writing directories atomically


# What each writer of this module leaves in its folder. An existing output folder is replaced only
# when it is this module's own output of the same kind and holds nothing else: a converter must
# never delete what a user put there (a notes.txt, a source model).


# ----------------------------------------------------------------------------------------------
# Writing a HF directory


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def save_safetensors(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


# ----------------------------------------------------------------------------------------------
# HF directory output


def _tokenizer_special_ids(tokenizer_dir: Path) -> dict:
    """bos/eos/pad token ids named in tokenizer_config.json, resolved through tokenizer.json."""
    cfg_path, tok_path = tokenizer_dir / "tokenizer_config.json", tokenizer_dir / "tokenizer.json"
    if not (cfg_path.is_file() and tok_path.is_file()):
        return {}
    cfg = json.loads(cfg_path.read_text())
    tok = json.loads(tok_path.read_text())
    vocab = tok.get("model", {}).get("vocab")
    ids = dict(vocab) if isinstance(vocab, dict) else {}
    ids.update({t["content"]: t["id"] for t in tok.get("added_tokens", [])})
    out = {}
    for key in ("bos_token", "eos_token", "pad_token"):
        token = cfg.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        if token is not None and token in ids:
            out[f"{key}_id"] = ids[token]
    return out


def save_hf(
    out_dir: str | os.PathLike,
    hf_sd: dict[str, torch.Tensor],
    config: dict,
    tokenizer_dir: str | os.PathLike | None = None,
    *,
    generation_config: dict | None = None,
    max_shard_bytes: int = 5 * 2**30,
    marker: dict | None = None,
    may_replace: ReplaceCheck | None = None,
) -> None:
    """Write a HF model directory (atomically): safetensors (sharded with an index when larger
    than `max_shard_bytes`), config.json, generation_config.json and, from `tokenizer_dir`, the
    tokenizer files (tokenizer.json, tokenizer_config.json with its chat template, ...). An existing
    `out_dir` is replaced only when `may_replace` accepts it (default: only an empty folder)."""
    config = dict(config)
    special = {}
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        if not any((tokenizer_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
            raise ValueError(f"tokenizer {tokenizer_dir}: no tokenizer.json or tokenizer.model there")
        special = _tokenizer_special_ids(tokenizer_dir)
        beyond = {k: v for k, v in special.items() if v >= config.get("vocab_size", v + 1)}
        if beyond:
            raise ValueError(
                f"tokenizer {tokenizer_dir}: special tokens {beyond} are beyond the model's vocabulary "
                f"({config['vocab_size']} ids); export with the tokenizer the model was trained with"
            )
        for key, value in special.items():
            config.setdefault(key, value)
    dtypes = {t.dtype for t in hf_sd.values()}
    if len(dtypes) == 1 and next(iter(dtypes)) in _HF_DTYPE_NAMES:
        # transformers 5 writes `dtype`, 4 and Meta's files `torch_dtype`: keep the file's style
        key = "dtype" if "dtype" in config else "torch_dtype"
        config[key] = _HF_DTYPE_NAMES[next(iter(dtypes))]
    if generation_config is None:
        generation_config = {"_from_model_config": True}
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if config.get(key) is not None:
                generation_config[key] = config[key]
        eos = config.get("eos_token_id")
        eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if "eos_token_id" in special:  # e.g. Llama 3 chat: <|eot_id|> ends a reply
            eos.add(special["eos_token_id"])
        if eos:
            generation_config["eos_token_id"] = sorted(eos) if len(eos) > 1 else eos.pop()
    with atomic_dir(out_dir, may_replace) as tmp:
        shards, current, size = [], {}, 0
        for name, tensor in hf_sd.items():
            nbytes = tensor.numel() * tensor.element_size()
            if current and size + nbytes > max_shard_bytes:
                shards.append(current)
                current, size = {}, 0
            current[name] = tensor
            size += nbytes
        shards.append(current)
        if len(shards) == 1:
            save_safetensors(shards[0], tmp / "model.safetensors", {"format": "pt"})
        else:
            weight_map = {}
            for i, part in enumerate(shards, 1):
                fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_safetensors(part, tmp / fname, {"format": "pt"})
                weight_map.update({name: fname for name in part})
            total = sum(t.numel() * t.element_size() for t in hf_sd.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            write_json(tmp / "model.safetensors.index.json", index)
        write_json(tmp / "config.json", config)
        write_json(tmp / "generation_config.json", generation_config)
        if marker is not None:
            write_json(tmp / EXPORT_MARKER, marker)
        if tokenizer_dir is not None:
            for fname in TOKENIZER_FILES:
                if (tokenizer_dir / fname).is_file():
                    shutil.copyfile(tokenizer_dir / fname, tmp / fname)


# ----------------------------------------------------------------------------------------------
# This project's Megatron checkpoint
