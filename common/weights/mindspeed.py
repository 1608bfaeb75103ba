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
from common.model.weight_layout import full_source_name, merge_shards
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
