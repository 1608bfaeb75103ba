"""MindSpeed-LLM's Megatron checkpoints (``convert_ckpt.py --save-model-type mg``), read as they are.

Layout (../shared/reference/seed-formats.md, section 3)::

    latest_checkpointed_iteration.txt      "1" (or "release")
    iter_0000001/mp_rank_00/model_optim_rng.pt          TP rank 00 (PP = 1)
    iter_0000001/mp_rank_01_001/model_optim_rng.pt      TP rank 01, pipeline stage 001 (PP > 1)

Each ``model_optim_rng.pt`` is a pickle of ``{"args": argparse.Namespace, "checkpoint_version",
"iteration", "model": the stage's state dict, ...}`` with Megatron-core's own parameter names and
TP layout (the one this project's models have), layer indices local to the stage, and, for a
reward model (``--orm``), ``rm_head.weight`` ``[1, hidden/TP]`` and ``rm_head.bias`` ``[1]``.

A pickle can run any code when it is loaded. These files are read with PyTorch's restricted
unpickler (``torch.load(weights_only=True)``), which builds tensors and plain values only, with
``argparse.Namespace`` and Megatron's enums admitted by name (``ADMITTED``); anything else in a file
(a ``__reduce__`` payload, an unknown class) is refused before it runs, with the name of what it
asked for. ``MindSpeedReader`` offers what ``common.weights.convert.CheckpointReader`` offers, so
every ``*.load`` key and ``tools.convert_checkpoint`` take such a folder directly.
"""

from __future__ import annotations

import argparse
import enum
import pickle
import re
from pathlib import Path

import torch

from common.config.arch import LlamaArch
from common.model.weight_layout import check_layout, full_source_name, megatron_param_names, merge_shards, shard
from common.util.atomic_files import atomic_dir
from common.weights.full_tensors import FullTensors

TRACKER = "latest_checkpointed_iteration.txt"
RANK_DIR = re.compile(r"mp_rank_(\d{2})(?:_(\d{3}))?$")
HEAD = "output_layer.weight"  # this project's name of the reward model's scalar head


def is_mindspeed_checkpoint(path) -> bool:
    return (Path(path) / TRACKER).is_file()


def _admitted() -> list:
    """What the restricted unpickler may build besides tensors and plain values: the argparse
    namespace of the run's arguments and the enums Megatron stores in it."""
    admitted: list = [argparse.Namespace]
    try:
        from megatron.core import enums as core_enums
        from megatron.core.transformer import enums as transformer_enums
    except ImportError:  # pragma: no cover - megatron-core is a dependency
        return admitted
    for module in (core_enums, transformer_enums):
        admitted += [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, enum.Enum)]
    return admitted


def safe_load(path: Path) -> dict:
    """``torch.load`` that builds tensors, plain values and ``_admitted()`` classes only; a file that
    asks for anything else is refused (ValueError naming it) and nothing of it runs."""
    try:
        with torch.serialization.safe_globals(_admitted()):
            # memory-mapped: an 8B model's shards are not read into memory to learn its architecture
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        wanted = re.search(r"GLOBAL (\S+)", str(e))
        what = f" asks for {wanted.group(1)}," if wanted else ""
        raise ValueError(
            f"{path}:{what} which is neither a tensor, a plain value nor one of the argparse/Megatron types a "
            "MindSpeed checkpoint holds; refused without running it (a pickle can run code when loaded). "
            "Convert the checkpoint where it was made, or check where the file came from"
        ) from None
    except (OSError, RuntimeError, EOFError) as e:
        raise ValueError(f"{path}: not a readable PyTorch file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or "model" not in obj:
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: no 'model' state dict (found {found}); not a MindSpeed/Megatron checkpoint")
    return obj


def iteration_dir(path: Path) -> Path:
    """The folder the tracker names: ``iter_{N:07d}`` or ``release``."""
    text = (path / TRACKER).read_text().strip()
    if text == "release":
        name = "release"
    elif text.isdigit():
        name = f"iter_{int(text):07d}"
    else:
        raise ValueError(f"{path / TRACKER}: holds {text!r}, not an iteration number or 'release'")
    folder = path / name
    if not folder.is_dir():
        found = sorted(
            p.name for p in path.iterdir() if p.is_dir() and (p.name.startswith("iter_") or p.name == "release")
        )
        raise ValueError(
            f"{path}: {TRACKER} names {name}, which is not there (found: {', '.join(found) or 'none'}); "
            f"write the iteration to use into {TRACKER}"
        )
    return folder


def rank_files(folder: Path) -> tuple[int, int, dict[tuple[int, int], Path]]:
    """(TP, PP, {(tp rank, pp rank): model_optim_rng.pt}) of an iteration folder, checked complete."""
    found: dict[tuple[int, int], Path] = {}
    for sub in sorted(folder.iterdir()):
        match = RANK_DIR.match(sub.name)
        if match:
            found[(int(match.group(1)), int(match.group(2) or 0))] = sub / "model_optim_rng.pt"
    if not found:
        raise ValueError(f"{folder}: no mp_rank_XX[_YYY] folders; not a Megatron checkpoint iteration")
    tp = max(t for t, _ in found) + 1
    pp = max(p for _, p in found) + 1
    missing = [
        f"mp_rank_{t:02d}" + (f"_{p:03d}" if pp > 1 else "")
        for t in range(tp)
        for p in range(pp)
        if (t, p) not in found or not found[(t, p)].is_file()
    ]
    if missing:
        raise ValueError(
            f"{folder}: TP {tp} x PP {pp} needs every rank's model_optim_rng.pt; missing: {', '.join(missing)}; "
            "copy the whole checkpoint folder"
        )
    return tp, pp, found


def arch_from_args(args: argparse.Namespace, where: Path) -> LlamaArch:
    """The Llama architecture a Megatron/MindSpeed run's arguments describe."""

    def get(name: str, default=None):
        value = getattr(args, name, default)
        if value is None and default is None:
            raise ValueError(f"{where}: the saved arguments lack {name}; not a Llama checkpoint this project reads")
        return value

    heads = get("num_attention_heads")
    llama3 = getattr(args, "rope_scaling_type", None) == "llama3" or bool(getattr(args, "use_rope_scaling", False))
    vocab = getattr(args, "vocab_size", None) or get("padded_vocab_size")
    return LlamaArch(
        num_layers=get("num_layers"),
        hidden_size=get("hidden_size"),
        ffn_hidden_size=get("ffn_hidden_size"),
        num_attention_heads=heads,
        num_query_groups=getattr(args, "num_query_groups", None)
        if getattr(args, "group_query_attention", False)
        else heads,
        vocab_size=vocab,
        max_position_embeddings=get("max_position_embeddings"),
        rope_theta=float(getattr(args, "rotary_base", 10000) or 10000),
        rope_scaling_factor=float(get("rope_scaling_factor", 8.0)) if llama3 else None,
        rope_low_freq_factor=float(getattr(args, "low_freq_factor", 1.0) or 1.0),
        rope_high_freq_factor=float(getattr(args, "high_freq_factor", 4.0) or 4.0),
        rope_original_max_position_embeddings=int(getattr(args, "original_max_position_embeddings", 8192) or 8192),
        rms_norm_eps=float(getattr(args, "norm_epsilon", 1e-5)),
        tie_word_embeddings=not getattr(args, "untie_embeddings_and_output_weights", False),
    )


class MindSpeedReader(FullTensors):
    """A MindSpeed-LLM Megatron checkpoint, read whole into memory (each rank's file once), as
    ``CheckpointReader`` reads this project's: ``arch``, ``reward``, ``tp``, ``pp``, ``shard``,
    ``has_shard``, ``full``, with model-wide layer names."""

    def __init__(self, path):
        self.dir = Path(path)
        folder = iteration_dir(self.dir)
        self.tp, self.pp, files = rank_files(folder)
        saved = {rank: safe_load(file) for rank, file in files.items()}
        first = saved[(0, 0)]
        self.arch = arch_from_args(first["args"], files[(0, 0)])
        self.reward = any(k.startswith("rm_head.") for s in saved.values() for k in s["model"])
        self.meta = {"format": "mindspeed-megatron", "kind": "reward" if self.reward else "policy",
                     "tp": self.tp, "pp": self.pp, "iteration": first.get("iteration")}  # fmt: skip
        if self.arch.num_layers % self.pp:
            raise ValueError(f"{folder}: {self.arch.num_layers} layers do not split into {self.pp} pipeline stages")
        per_stage = self.arch.num_layers // self.pp
        self.rm_bias: float | None = None
        self._shards: dict[str, dict[int, torch.Tensor]] = {}
        for (t, p), obj in saved.items():
            if any(k.startswith("model") and k != "model" for k in obj):
                raise ValueError(f"{files[(t, p)]}: virtual pipeline stages (model0, model1, ...) are not supported")
            for name, tensor in obj["model"].items():
                if name.endswith("._extra_state") or tensor is None:
                    continue
                name = _global_name(name, p * per_stage)
                if name == "rm_head.bias":
                    self.rm_bias = float(tensor.float().reshape(-1)[0])
                    continue
                if name == "rm_head.weight":
                    name = HEAD
                self._shards.setdefault(name, {})[t] = tensor
        if self.rm_bias:
            raise ValueError(
                f"{self.dir}: the reward head has a bias ({self.rm_bias:g}); this project's reward head has none. A "
                "constant added to every score changes no chosen/rejected pair, but the scores would differ: "
                "not loaded rather than changed silently"
            )

    def optional_json(self, name: str) -> dict | None:
        return None

    def has_shard(self, name: str, tp_rank: int) -> bool:
        return tp_rank in self._shards.get(name, {}) and not (name == HEAD and self.reward)

    def shard(self, name: str, tp_rank: int) -> torch.Tensor:
        return self._shards[name][tp_rank]

    def full(self, name: str) -> torch.Tensor:
        """The full (TP=1, unpadded) tensor of parameter ``name``."""
        name = full_source_name(name, self.arch, self.reward)
        if name not in self._shards or len(self._shards[name]) != self.tp:
            raise ValueError(
                f"checkpoint {self.dir}: no tensor {name!r} on every TP rank; the checkpoint is incomplete"
            )
        shards = [self._shards[name][t] for t in range(self.tp)]
        if name == HEAD and self.reward:  # MindSpeed's rm_head is row-parallel: [1, hidden/TP] per rank
            return torch.cat(shards, dim=1)
        return merge_shards(name, shards, self.arch.vocab_size, self.reward)


def _global_name(name: str, offset: int) -> str:
    match = re.match(r"decoder\.layers\.(\d+)\.(.*)", name)
    return f"decoder.layers.{int(match.group(1)) + offset}.{match.group(2)}" if match else name


# ----------------------------------------------------------------------------------------------
# The way back: a trained model written as MindSpeed-LLM's converter writes one


def mindspeed_args(arch: LlamaArch, *, reward: bool, tp: int, pp: int, dtype: torch.dtype) -> argparse.Namespace:
    """The saved ``args`` of a checkpoint written here: the model keys of the original's model yaml
    (``configs/rlxf/model/*.yaml``) and the layout, so ``arch_from_args`` and Megatron read it back.
    The vocabulary is padded only to a multiple of TP (``make_vocab_size_divisible_by: 1``, as the
    original's model files set it), so the shapes match its ``padded_vocab_size``."""
    from megatron.core.enums import ModelType

    return argparse.Namespace(
        num_layers=arch.num_layers, hidden_size=arch.hidden_size, ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads, group_query_attention=arch.num_query_groups != arch.num_attention_heads,
        num_query_groups=arch.num_query_groups, kv_channels=arch.head_dim,
        max_position_embeddings=arch.max_position_embeddings, vocab_size=arch.vocab_size,
        make_vocab_size_divisible_by=1, padded_vocab_size=_padded(arch.vocab_size, tp),
        position_embedding_type="rope", use_rotary_position_embeddings=True, rotary_base=arch.rope_theta,
        rope_scaling_type="llama3" if arch.rope_scaling_factor is not None else None,
        rope_scaling_factor=arch.rope_scaling_factor, low_freq_factor=arch.rope_low_freq_factor,
        high_freq_factor=arch.rope_high_freq_factor,
        original_max_position_embeddings=arch.rope_original_max_position_embeddings,
        normalization="RMSNorm", norm_epsilon=arch.rms_norm_eps, swiglu=True, disable_bias_linear=True,
        add_bias_linear=False, untie_embeddings_and_output_weights=not arch.tie_word_embeddings,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, params_dtype=dtype,
        use_mcore_models=True, transformer_impl="local", model_type=ModelType.encoder_or_decoder, orm=reward,
        iteration=1,
    )  # fmt: skip


def _padded(vocab_size: int, tp: int) -> int:
    return -(-vocab_size // tp) * tp


def write_mindspeed(
    out_dir,
    full,
    arch: LlamaArch,
    *,
    reward: bool,
    tp: int,
    pp: int,
    dtype: torch.dtype | None = None,
    progress=None,
    may_replace=None,
) -> None:
    """Write ``full`` (full tensors by model-wide name: a reader of any checkpoint) as
    ``convert_ckpt.py --save-model-type mg`` does: tracker ``1``, ``iter_0000001/mp_rank_XX[_YYY]/
    model_optim_rng.pt`` holding ``args``, ``checkpoint_version`` 3.0, ``iteration`` 1, ``model`` (the
    stage's tensors in Megatron-core's TP layout, stage-local layer indices, a tied output layer
    copied to the last stage when PP > 1; a reward model's head as ``rm_head.weight`` [1, hidden/TP]
    and a zero ``rm_head.bias``) and ``num_floating_point_operations_so_far`` 0. No optimizer or
    RNG state, as that converter writes none. Atomic, like every writer here; an existing ``out_dir``
    is replaced only if ``may_replace`` (``common.weights.convert.may_replace("mindspeed")``) allows it."""
    check_layout(arch, tp, pp)
    per_stage, padded = arch.num_layers // pp, _padded(arch.vocab_size, tp)
    with atomic_dir(out_dir, may_replace) as tmp:
        (tmp / TRACKER).write_text("1")
        for p in range(pp):
            stage: list[dict[str, torch.Tensor]] = [{} for _ in range(tp)]
            for name in megatron_param_names(arch, reward=reward, pp=pp, pp_rank=p):
                tensor = full[full_source_name(name, arch, reward)]
                if dtype is not None:
                    tensor = tensor.to(dtype)
                for t in range(tp):
                    if reward and name == HEAD:  # row-parallel in MindSpeed: columns split
                        stage[t]["rm_head.weight"] = tensor.chunk(tp, dim=1)[t].clone()
                        stage[t]["rm_head.bias"] = torch.zeros(1, dtype=tensor.dtype)
                    else:
                        local = _global_name(name, -p * per_stage)
                        stage[t][local] = shard(name, tensor, padded, reward, rank=t, tp=tp).clone()
                if progress:
                    progress(1)
            saved_dtype = dtype or next(iter(stage[0].values())).dtype
            args = mindspeed_args(arch, reward=reward, tp=tp, pp=pp, dtype=saved_dtype)
            for t in range(tp):
                folder = tmp / "iter_0000001" / (f"mp_rank_{t:02d}" + (f"_{p:03d}" if pp > 1 else ""))
                folder.mkdir(parents=True)
                saved = {"args": args, "checkpoint_version": 3.0, "iteration": 1, "model": stage[t],
                         "num_floating_point_operations_so_far": 0}  # fmt: skip
                torch.save(saved, folder / "model_optim_rng.pt")
