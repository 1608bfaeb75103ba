"""Llama-3 checkpoints: Hugging Face format <-> this project's Megatron-core checkpoints.

Three forms of the same weights:

- **HF**: a Hugging Face directory (config.json + safetensors) of a `LlamaForCausalLM` (policy)
  or a `LlamaForSequenceClassification` with one label (reward model; `score` <-> ScalarHead).
- **full**: Megatron parameter names with model-wide layer indices, TP=1/PP=1 tensors, unpadded
  vocabulary (`hf_to_full` / `full_to_hf`). Tied embeddings have no `output_layer.weight`.
- **Megatron checkpoint** (this project's on-disk format, one directory):

      meta.json                      {"format": "odpo-megatron", "version": 1, "kind": "policy" | "reward",
                                      "tp": T, "pp": P, "vocab_size": V, "padded_vocab_size": Vp}
      arch.json                      the LlamaArch fields (common/model.py)
      model_tp{t}_pp{p}.safetensors  TP rank t / pipeline stage p's tensors exactly as Megatron holds
                                     them (vocab-padded shards), named with model-wide layer indices
                                     (`decoder.layers.17.mlp.linear_fc1.weight`), in the dtype they
                                     were written in (HF bf16 stays bf16; the loader casts)
      hf_config.json                 optional: the source HF config.json (and
      hf_generation_config.json      generation_config.json), re-emitted unchanged by mcore-to-hf

  It is written atomically (temporary sibling directory, fsync, rename). A checkpoint loads into
  a model of any TP/PP: same TP -> shards are copied; other TP -> the full tensor of each
  parameter is merged from the checkpoint's shards and re-sharded (`load_checkpoint_into_model`).

The TP layout itself (which rows/columns a rank holds) and the HF -> Megatron name mapping live in
common/weight_layout.py (`shard`, `merge_shards`, `hf_full_tensor`). This module adds the reverse
mapping, file formats and gathering.

    python -m tools.convert_checkpoint hf-to-mcore --hf DIR --out DIR --tp N --pp N
    python -m tools.convert_checkpoint mcore-to-hf --ckpt DIR --out DIR [--tokenizer DIR]
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from common.arch import layout_problem
from common.checkpoint import fsync_dir
from common.model import LlamaArch, RewardModel, load_hf_llama_state_dict
from common.weight_layout import global_names, hf_full_tensor, merge_shards, padded_vocab_size, shard

FORMAT = "odpo-megatron"
FORMAT_VERSION = 1
POLICY_ARCHITECTURE = "LlamaForCausalLM"
REWARD_ARCHITECTURE = "LlamaForSequenceClassification"
_LAYER_PARAMS = (
    "input_layernorm.weight",
    "self_attention.linear_qkv.weight",
    "self_attention.linear_proj.weight",
    "pre_mlp_layernorm.weight",
    "mlp.linear_fc1.weight",
    "mlp.linear_fc2.weight",
)
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "chat_template.json", "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt",
)
_HF_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}

Progress = Callable[[int], None] | None  # called with the number of tensors just done


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
            f"HF config: {REWARD_ARCHITECTURE} with {labels} labels; a reward model has exactly one "
            "(num_labels=1)"
        )
    return True


def _same_arch(a: LlamaArch, b: LlamaArch) -> bool:
    """Equal up to init_method_std (which only matters for random initialisation)."""
    skip = {"init_method_std"}
    fields = [f.name for f in dataclasses.fields(LlamaArch) if f.name not in skip]
    return all(getattr(a, name) == getattr(b, name) for name in fields)


def _check_arch(got: LlamaArch, want: LlamaArch, where: str) -> None:
    if not _same_arch(got, want):
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


def megatron_param_names(arch: LlamaArch, *, reward: bool, pp: int = 1, pp_rank: int = 0) -> list[str]:
    """Model-wide names of the parameters pipeline stage `pp_rank` of `pp` holds (what
    `weight_layout.global_names` yields for a model built there). Tied embeddings: the last stage of a
    pipeline (PP > 1) holds its own copy `output_layer.weight`; with PP = 1 there is none."""
    check_layout(arch, 1, pp)
    per_stage = arch.num_layers // pp
    first, last = pp_rank == 0, pp_rank == pp - 1
    names = ["embedding.word_embeddings.weight"] if first else []
    for layer in range(pp_rank * per_stage, (pp_rank + 1) * per_stage):
        names += [f"decoder.layers.{layer}.{param}" for param in _LAYER_PARAMS]
    if last:
        names.append("decoder.final_layernorm.weight")
        if reward or not arch.tie_word_embeddings or not first:
            names.append("output_layer.weight")
    return names


def _full_source_name(name: str, arch: LlamaArch, reward: bool) -> str:
    """The full-form name a parameter's values come from (a tied output layer's copy at PP > 1
    is the embedding)."""
    if name == "output_layer.weight" and not reward and arch.tie_word_embeddings:
        return "embedding.word_embeddings.weight"
    return name


def hf_to_full(hf_sd: Mapping, arch: LlamaArch, reward: bool) -> dict[str, torch.Tensor]:
    """HF Llama state dict -> full (TP=1, PP=1) Megatron state dict."""
    hf_to_full_check_keys(hf_sd.keys(), arch, reward)
    full = {n: hf_full_tensor(n, hf_sd, arch, reward) for n in megatron_param_names(arch, reward=reward)}
    return full


def full_to_hf_names(arch: LlamaArch, reward: bool) -> list[str]:
    names = ["model.embed_tokens.weight"]
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        names += [p + s for s in (
            "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
            "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
            "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
        )]
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
        raise ValueError(f"HF model {hf_dir}: folder not found; give a local Hugging Face model folder "
                         f"(e.g. `.venv/bin/hf download <repo-id> --local-dir {hf_dir}`)")
    if not path.is_file():
        raise ValueError(f"HF model {hf_dir}: no config.json; give a Hugging Face model directory")
    return json.loads(path.read_text())


def load_hf_into_model(
    model, hf_dir: str | os.PathLike, arch: LlamaArch, reward: bool | None = None
) -> None:
    """Load a HF Llama directory into this rank's shards of `model` (policy GPTModel or
    RewardModel), reading only the tensors this TP rank / pipeline stage needs."""
    reward = isinstance(model, RewardModel) if reward is None else reward
    if reward != isinstance(model, RewardModel):
        raise ValueError(f"HF model {hf_dir}: reward={reward} but the model is a {type(model).__name__}")
    cfg = read_hf_config(hf_dir)
    _check_arch(arch_from_hf_config(cfg), arch, f"HF model {hf_dir}")
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
EXPORT_MARKER = "odpo_export.json"  # in every HF folder export_hf writes; says "ours, replaceable"
_OWN_FILES = {
    "checkpoint": ("meta.json", "arch.json", "hf_config.json", "hf_generation_config.json", "model_tp*_pp*.safetensors"),
    "hf-export": (EXPORT_MARKER, "config.json", "generation_config.json", "model.safetensors",
                  "model-*-of-*.safetensors", "model.safetensors.index.json", *_TOKENIZER_FILES),
}
_KIND_NAMES = {"checkpoint": "a checkpoint of this project (meta.json + arch.json)",
               "hf-export": f"a Hugging Face folder written by mcore-to-hf ({EXPORT_MARKER})"}


def output_kind(path: str | os.PathLike) -> str | None:
    """``"checkpoint"`` or ``"hf-export"`` for a folder this module wrote, else None."""
    path = Path(path)
    if is_checkpoint(path):
        return "checkpoint"
    if (path / EXPORT_MARKER).is_file():
        return "hf-export"
    return None


def check_output_dir(out_dir: str | os.PathLike, kind: str, inputs: Mapping[str, str | os.PathLike] = {}) -> None:
    """The one rule for every folder this module writes: ``out_dir`` is not, does not contain and
    does not lie inside an input (``inputs``: option name -> path), and an existing ``out_dir`` is
    replaced only when it is empty or this module's own output of ``kind`` holding nothing else."""
    out = Path(os.path.realpath(out_dir))
    for option, path in inputs.items():
        if path is None:
            continue
        src = Path(os.path.realpath(path))
        if out == src or src.is_relative_to(out) or out.is_relative_to(src):
            raise ValueError(f"--out {out_dir}: is, contains or lies inside {option} {path}, which would be "
                             f"replaced; --out must be a separate new folder")
    if not os.path.lexists(out_dir):
        return
    if not Path(out_dir).is_dir():
        raise ValueError(f"--out {out_dir}: is a file; --out must be a folder (new, or {_KIND_NAMES[kind]} to replace)")
    found = sorted(p.name for p in Path(out_dir).iterdir())
    if not found:
        return
    theirs = [n for n in found if not any(fnmatch.fnmatch(n, pat) for pat in _OWN_FILES[kind])]
    if output_kind(out_dir) != kind or theirs:
        detail = f"it holds {', '.join((theirs or found)[:4])}{', ...' if len(theirs or found) > 4 else ''}"
        raise ValueError(f"--out {out_dir}: exists and is not only {_KIND_NAMES[kind]} ({detail}); "
                         "nothing there is deleted: pick a new folder, or remove it yourself")


def _tmp_path(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.tmp"


def _prepare_tmp(out_dir: Path) -> Path:
    tmp = _tmp_path(out_dir)
    if tmp.exists():
        shutil.rmtree(tmp)  # left over by an interrupted write
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, out_dir: Path) -> None:
    """fsync every file of `tmp`, then move it to `out_dir` (replacing an older one of the same
    kind only: ``check_output_dir``, checked again here as the last guard before a delete)."""
    kind = output_kind(tmp)
    if kind is None:  # a plain HF folder (save_hf without export_hf's marker): never replaces one
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise ValueError(f"{out_dir}: exists and is not empty; write to a new folder")
    else:
        check_output_dir(out_dir, kind)
    for path in tmp.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(tmp)
    old = out_dir.parent / f".{out_dir.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    fsync_dir(out_dir.parent)
    if old.exists():
        shutil.rmtree(old)


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out_dir` only when the block completes."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _prepare_tmp(out_dir)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, out_dir)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _save_safetensors(tensors: dict, path: Path, metadata: dict | None = None) -> None:
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
) -> None:
    """Write a HF model directory (atomically): safetensors (sharded with an index when larger
    than `max_shard_bytes`), config.json, generation_config.json and, from `tokenizer_dir`, the
    tokenizer files (tokenizer.json, tokenizer_config.json with its chat template, ...)."""
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
    with atomic_dir(out_dir) as tmp:
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
            _save_safetensors(shards[0], tmp / "model.safetensors", {"format": "pt"})
        else:
            weight_map = {}
            for i, part in enumerate(shards, 1):
                fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                _save_safetensors(part, tmp / fname, {"format": "pt"})
                weight_map.update({name: fname for name in part})
            total = sum(t.numel() * t.element_size() for t in hf_sd.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            _write_json(tmp / "model.safetensors.index.json", index)
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json", generation_config)
        if marker is not None:
            _write_json(tmp / EXPORT_MARKER, marker)
        if tokenizer_dir is not None:
            for fname in _TOKENIZER_FILES:
                if (tokenizer_dir / fname).is_file():
                    shutil.copyfile(tokenizer_dir / fname, tmp / fname)


# ----------------------------------------------------------------------------------------------
# This project's Megatron checkpoint


def shard_file_name(tp_rank: int, pp_rank: int) -> str:
    return f"model_tp{tp_rank}_pp{pp_rank}.safetensors"


def _meta(arch: LlamaArch, kind: str, tp: int, pp: int) -> dict:
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "kind": kind, "tp": tp, "pp": pp,
        "vocab_size": arch.vocab_size, "padded_vocab_size": padded_vocab_size(arch.vocab_size, tp),
    }


def check_layout(arch: LlamaArch, tp: int, pp: int) -> None:
    problem = layout_problem(arch, tp, pp)
    if problem:
        raise ValueError(f"layout: {problem[1]}; use a --{problem[0]} that divides it")


def iter_shards(
    full: Mapping, arch: LlamaArch, *, reward: bool, tp: int, pp: int, progress: Progress = None
) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
    """(tp_rank, pp_rank, tensors) of every Megatron rank, from full tensors: `full` maps full
    names to tensors (a dict, or `FullFromHF` to stream from a HF directory). One pipeline
    stage is materialised at a time; each full tensor is read once."""
    check_layout(arch, tp, pp)
    padded = padded_vocab_size(arch.vocab_size, tp)
    for pp_rank in range(pp):
        stage = [{} for _ in range(tp)]
        for name in megatron_param_names(arch, reward=reward, pp=pp, pp_rank=pp_rank):
            tensor = full[_full_source_name(name, arch, reward)]
            for tp_rank in range(tp):
                stage[tp_rank][name] = shard(name, tensor, padded, reward, rank=tp_rank, tp=tp).clone()
            if progress:
                progress(1)
        for tp_rank in range(tp):
            yield tp_rank, pp_rank, stage[tp_rank]


class FullFromHF(Mapping):
    """Full-form tensors computed on demand from a HF state dict (or HFSafetensors)."""

    def __init__(self, hf: Mapping, arch: LlamaArch, reward: bool):
        self.hf, self.arch, self.reward = hf, arch, reward
        self.names = megatron_param_names(arch, reward=reward)

    def __getitem__(self, name: str) -> torch.Tensor:
        return hf_full_tensor(name, self.hf, self.arch, self.reward)

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def write_checkpoint(
    out_dir: str | os.PathLike,
    full: Mapping,
    arch: LlamaArch,
    *,
    reward: bool,
    tp: int,
    pp: int,
    hf_config: dict | None = None,
    hf_generation_config: dict | None = None,
    dtype: torch.dtype | None = None,
    progress: Progress = None,
) -> None:
    """Write a Megatron checkpoint for a TP x PP layout from full tensors (offline, one process)."""
    check_layout(arch, tp, pp)
    with atomic_dir(out_dir) as tmp:
        for tp_rank, pp_rank, tensors in iter_shards(full, arch, reward=reward, tp=tp, pp=pp, progress=progress):
            if dtype is not None:
                tensors = {k: v.to(dtype) for k, v in tensors.items()}
            _save_safetensors(tensors, tmp / shard_file_name(tp_rank, pp_rank))
        _write_json(tmp / "arch.json", dataclasses.asdict(arch))
        _write_json(tmp / "meta.json", _meta(arch, "reward" if reward else "policy", tp, pp))
        if hf_config is not None:
            _write_json(tmp / "hf_config.json", hf_config)
        if hf_generation_config is not None:
            _write_json(tmp / "hf_generation_config.json", hf_generation_config)


def is_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / "meta.json").is_file() and (Path(path) / "arch.json").is_file()


class CheckpointReader:
    """Reads a Megatron checkpoint of this project: its arch and meta, and any parameter as the
    checkpoint's shard or as the merged full tensor; files are opened lazily."""

    def __init__(self, ckpt_dir: str | os.PathLike):
        from safetensors import safe_open

        self.dir = Path(ckpt_dir)
        if not self.dir.is_dir():
            raise ValueError(f"checkpoint {self.dir}: folder not found; check the path")
        if not is_checkpoint(self.dir) and (self.dir / "config.json").is_file():
            raise ValueError(
                f"checkpoint {self.dir}: is a Hugging Face model folder (config.json), not a checkpoint of this "
                f"project; it loads as it is, or convert it with `python -m tools.convert_checkpoint hf-to-mcore --hf {self.dir} --out <new folder>`"
            )
        if not is_checkpoint(self.dir):
            raise ValueError(
                f"checkpoint {self.dir}: no meta.json/arch.json; give a directory written by "
                "tools.convert_checkpoint or common.convert.save_checkpoint"
            )
        self.meta = json.loads((self.dir / "meta.json").read_text())
        if self.meta.get("format") != FORMAT or self.meta.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"checkpoint {self.dir}: format {self.meta.get('format')!r} v{self.meta.get('version')} "
                f"is not {FORMAT!r} v{FORMAT_VERSION}"
            )
        self.arch = LlamaArch(**json.loads((self.dir / "arch.json").read_text()))
        self.reward = self.meta["kind"] == "reward"
        self.tp, self.pp = self.meta["tp"], self.meta["pp"]
        self._where: dict[str, dict[int, Path]] = {}  # name -> tp_rank -> file
        for pp_rank in range(self.pp):
            for tp_rank in range(self.tp):
                path = self.dir / shard_file_name(tp_rank, pp_rank)
                if not path.is_file():
                    raise ValueError(f"checkpoint {self.dir}: missing {path.name}; the checkpoint is incomplete")
                with safe_open(path, framework="pt") as f:
                    for key in f.keys():
                        self._where.setdefault(key, {})[tp_rank] = path

    def optional_json(self, name: str) -> dict | None:
        path = self.dir / name
        return json.loads(path.read_text()) if path.is_file() else None

    def has_shard(self, name: str, tp_rank: int) -> bool:
        return tp_rank in self._where.get(name, {})

    def shard(self, name: str, tp_rank: int) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self._where[name][tp_rank], framework="pt") as f:
            return f.get_tensor(name)

    def full(self, name: str) -> torch.Tensor:
        """The full (TP=1, unpadded) tensor of parameter `name`."""
        name = _full_source_name(name, self.arch, self.reward)
        if name not in self._where:
            raise ValueError(f"checkpoint {self.dir}: no tensor {name!r}; the checkpoint is incomplete")
        shards = [self.shard(name, t) for t in range(self.tp)]
        return merge_shards(name, shards, self.arch.vocab_size, self.reward)

    def full_state_dict(self, progress: Progress = None) -> dict[str, torch.Tensor]:
        out = {}
        for name in megatron_param_names(self.arch, reward=self.reward):
            out[name] = self.full(name)
            if progress:
                progress(1)
        return out

    def __getitem__(self, name: str) -> torch.Tensor:  # as a `full` mapping for iter_shards
        return self.full(name)


@torch.no_grad()
def load_checkpoint_into_model(model, ckpt_dir: str | os.PathLike, arch: LlamaArch) -> None:
    """Load this project's Megatron checkpoint into this rank's shards of `model`, whatever TP/PP
    the checkpoint was written with (same TP: shards copied; otherwise merged and re-sharded)."""
    from megatron.core import parallel_state

    reader = CheckpointReader(ckpt_dir)
    reward = isinstance(model, RewardModel)
    if reader.reward != reward:
        raise ValueError(
            f"checkpoint {ckpt_dir}: kind {reader.meta['kind']!r} but the model is a "
            f"{'reward model' if reward else 'policy'}; load a {'reward' if reward else 'policy'} checkpoint"
        )
    _check_arch(reader.arch, arch, f"checkpoint {ckpt_dir}")
    gpt = model.gpt if reward else model
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    for name, param in global_names(gpt):
        if reader.tp == tp and reader.has_shard(name, tp_rank):
            value = reader.shard(name, tp_rank)
        else:
            value = shard(name, reader.full(name), gpt.vocab_size, reward)
        if value.shape != param.shape:
            raise ValueError(
                f"checkpoint {ckpt_dir}: {name} has shape {tuple(value.shape)} here, the model "
                f"expects {tuple(param.shape)}"
            )
        param.copy_(value.to(param.dtype))


def arch_from_path(path: str | os.PathLike) -> tuple[LlamaArch, bool]:
    """(arch, is_reward) of a HF model directory or of this project's checkpoint."""
    if is_checkpoint(path):
        reader = CheckpointReader(path)
        return reader.arch, reader.reward
    cfg = read_hf_config(path)
    return arch_from_hf_config(cfg), is_reward_config(cfg)


def load_into_model(model, path: str | os.PathLike, arch: LlamaArch) -> None:
    """Load weights for a `load` key: a HF model directory or this project's checkpoint."""
    if is_checkpoint(path):
        load_checkpoint_into_model(model, path, arch)
    elif (Path(path) / "config.json").is_file():
        load_hf_into_model(model, path, arch)
    else:
        raise ValueError(
            f"load {path}: neither a Hugging Face model directory (config.json + safetensors) nor "
            "a checkpoint of this project (meta.json + arch.json)"
        )


# ----------------------------------------------------------------------------------------------
# From a live (distributed) model


def _stage_full_tensors(gpt, arch: LlamaArch, reward: bool) -> dict[str, torch.Tensor] | None:
    """This pipeline stage's full tensors (all-gathered over TP), on TP rank 0 of DP rank 0."""
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    keep = parallel_state.get_tensor_model_parallel_rank() == 0 and parallel_state.get_data_parallel_rank() == 0
    group = parallel_state.get_tensor_model_parallel_group()
    stage = {}
    for name, param in global_names(gpt):
        if _full_source_name(name, arch, reward) != name:
            continue  # a tied output layer's copy (PP > 1): the embedding is the weight
        local = param.detach().contiguous()
        shards = [local]
        if tp > 1:
            shards = [torch.empty_like(local) for _ in range(tp)]
            torch.distributed.all_gather(shards, local, group=group)
        if keep:
            stage[name] = merge_shards(name, shards, arch.vocab_size, reward).cpu().clone()
    return stage if keep else None


@torch.no_grad()
def gather_full_state_dict(model, arch: LlamaArch, reward: bool | None = None) -> dict | None:
    """Collective over the model's world: the HF state dict of the whole model on global rank
    0 (None elsewhere). Every rank must call it. Peak memory on rank 0: the full model."""
    from megatron.core import parallel_state

    reward = isinstance(model, RewardModel) if reward is None else reward
    gpt = model.gpt if reward else model
    stage = _stage_full_tensors(gpt, arch, reward)
    if stage is None:
        return None
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    full = stage
    if pp > 1:  # only the TP-0 / DP-0 pipeline (the one holding global rank 0) takes part
        first = parallel_state.get_pipeline_model_parallel_first_rank()
        is_first = parallel_state.is_pipeline_first_stage()
        stages = [None] * pp if is_first else None
        torch.distributed.gather_object(
            stage, stages, dst=first, group=parallel_state.get_pipeline_model_parallel_group()
        )
        if not is_first:
            return None
        full = {k: v for s in stages for k, v in s.items()}
    if torch.distributed.get_rank() != 0:
        return None
    return full_to_hf(full, arch, reward)


@torch.no_grad()
def save_checkpoint(
    model, out_dir: str | os.PathLike, arch: LlamaArch, *, hf_config: dict | None = None
) -> None:
    """Collective over the model's world: write this project's Megatron checkpoint of a live
    model, each (TP, PP) rank of DP rank 0 writing its own shard file (no gathering). `out_dir`
    must be on a file system every rank sees; global rank 0 publishes it atomically."""
    from megatron.core import parallel_state

    reward = isinstance(model, RewardModel)
    gpt = model.gpt if reward else model
    out_dir = Path(out_dir)
    rank = torch.distributed.get_rank()
    tmp = _tmp_path(out_dir)
    if rank == 0:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        _prepare_tmp(out_dir)
    torch.distributed.barrier()
    if parallel_state.get_data_parallel_rank() == 0:
        tensors = {name: p.detach().cpu().clone() for name, p in global_names(gpt)}
        path = tmp / shard_file_name(
            parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_pipeline_model_parallel_rank()
        )
        _save_safetensors(tensors, path)
    torch.distributed.barrier()
    if rank == 0:
        tp = parallel_state.get_tensor_model_parallel_world_size()
        pp = parallel_state.get_pipeline_model_parallel_world_size()
        _write_json(tmp / "arch.json", dataclasses.asdict(arch))
        _write_json(tmp / "meta.json", _meta(arch, "reward" if reward else "policy", tp, pp))
        if hf_config is not None:
            _write_json(tmp / "hf_config.json", hf_config)
        _publish(tmp, out_dir)
    torch.distributed.barrier()


def export_hf(
    ckpt_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype | None = None,
    progress: Progress = None,
) -> None:
    """This project's Megatron checkpoint (any TP/PP) -> a HF model directory. The source HF
    config.json is re-emitted when the checkpoint kept it, else one is made from the arch."""
    reader = CheckpointReader(ckpt_dir)
    full = reader.full_state_dict(progress)
    hf_sd = full_to_hf(full, reader.arch, reader.reward)
    if dtype is not None:
        hf_sd = {k: v.to(dtype) for k, v in hf_sd.items()}
    config = reader.optional_json("hf_config.json")
    if config is not None:
        _check_arch(arch_from_hf_config(config), reader.arch, f"checkpoint {ckpt_dir} hf_config.json")
    else:
        config = hf_config_from_arch(reader.arch, reward=reader.reward)
    generation_config = reader.optional_json("hf_generation_config.json")
    marker = {"format": "odpo-hf-export", "version": 1, "source_kind": reader.meta["kind"]}
    save_hf(out_dir, hf_sd, config, tokenizer_dir, generation_config=generation_config, marker=marker)


def import_hf(
    hf_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tp: int,
    pp: int,
    dtype: torch.dtype | None = None,
    progress: Progress = None,
) -> tuple[LlamaArch, bool]:
    """A HF model directory -> this project's Megatron checkpoint for TP x PP. Streams: one
    pipeline stage is in memory at a time. Returns (arch, is_reward)."""
    cfg = read_hf_config(hf_dir)
    arch = arch_from_hf_config(cfg)
    reward = is_reward_config(cfg)
    check_layout(arch, tp, pp)
    hf = HFSafetensors(hf_dir)
    hf_to_full_check_keys(hf.keys(), arch, reward)
    gen_path = Path(hf_dir) / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else None
    write_checkpoint(
        out_dir, FullFromHF(hf, arch, reward), arch, reward=reward, tp=tp, pp=pp,
        hf_config=cfg, hf_generation_config=gen, dtype=dtype, progress=progress,
    )
    return arch, reward


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
