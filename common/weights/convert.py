"""This project's Megatron-core checkpoint format, and conversion to and from Hugging Face folders.

- **Megatron checkpoint** (one directory):

      meta.json                      {"format": "odpo-megatron", "version": 1, "kind": "policy" | "reward",
                                      "tp": T, "pp": P, "vocab_size": V, "padded_vocab_size": Vp}
      arch.json                      the LlamaArch fields (common/config/arch.py)
      model_tp{t}_pp{p}.safetensors  TP rank t / pipeline stage p's tensors exactly as Megatron holds
                                     them (vocab-padded shards), named with model-wide layer indices
                                     (`decoder.layers.17.mlp.linear_fc1.weight`), in the dtype they
                                     were written in (HF bf16 stays bf16; the loader casts)
      hf_config.json                 optional: the source HF config.json (and
      hf_generation_config.json      generation_config.json), re-emitted unchanged by mcore-to-hf

  It is written atomically (common/util/atomic_files.py). A checkpoint loads into a model of any TP/PP:
  same TP -> shards are copied; other TP -> the full tensor of each parameter is merged from the
  checkpoint's shards and re-sharded (`load_checkpoint_into_model`).
- **Which existing folder a writer may replace** (`check_output_dir`): only its own output of the
  same kind, holding nothing else; a converter never deletes what a user put there.

The TP layout and the parameter names live in common/model/weight_layout.py; HF config.json, the HF <->
full tensor mapping and HF folder I/O in common/weights/hf_format.py.

    python -m tools.convert_checkpoint hf-to-mcore --hf DIR --out DIR --tp N --pp N
    python -m tools.convert_checkpoint mcore-to-hf --ckpt DIR --out DIR [--tokenizer DIR]
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from common.model.llama import LlamaArch, RewardModel
from common.model.weight_layout import (
    check_layout,
    full_source_name,
    global_names,
    hf_full_tensor,
    megatron_param_names,
    merge_shards,
    padded_vocab_size,
    shard,
)
from common.util.atomic_files import ReplaceCheck, atomic_dir, publish_dir, temp_dir, temp_path
from common.weights.full_tensors import FullTensors, Progress
from common.weights.hf_format import (
    EXPORT_MARKER,
    TOKENIZER_FILES,
    HFSafetensors,
    arch_from_hf_config,
    check_arch,
    full_to_hf,
    hf_config_from_arch,
    hf_to_full_check_keys,
    is_reward_config,
    load_hf_into_model,
    read_hf_config,
    save_hf,
    save_safetensors,
    write_json,
)

FORMAT = "odpo-megatron"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Which existing folder a writer may replace


# What each writer of this module leaves in its folder. An existing output folder is replaced only
# when it is this module's own output of the same kind and holds nothing else: a converter must
# never delete what a user put there (a notes.txt, a source model).
_OWN_FILES = {
    "checkpoint": (
        "meta.json",
        "arch.json",
        "hf_config.json",
        "hf_generation_config.json",
        "model_tp*_pp*.safetensors",
    ),
    "hf-export": (
        EXPORT_MARKER,
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "model-*-of-*.safetensors",
        "model.safetensors.index.json",
        *TOKENIZER_FILES,
    ),
    "mindspeed": ("latest_checkpointed_iteration.txt", "iter_*"),  # common/weights/mindspeed.write_mindspeed
}
_KIND_NAMES = {
    "checkpoint": "a checkpoint of this project (meta.json + arch.json)",
    "hf-export": f"a Hugging Face folder written by mcore-to-hf ({EXPORT_MARKER})",
    "mindspeed": "a MindSpeed-LLM Megatron checkpoint (latest_checkpointed_iteration.txt + iter_*)",
}


def output_kind(path: str | os.PathLike) -> str | None:
    """``"checkpoint"``, ``"hf-export"`` or ``"mindspeed"`` for a folder a converter wrote, else None."""
    from common.weights.mindspeed import is_mindspeed_checkpoint

    path = Path(path)
    if is_own_checkpoint(path):
        return "checkpoint"
    if (path / EXPORT_MARKER).is_file():
        return "hf-export"
    if is_mindspeed_checkpoint(path):
        return "mindspeed"
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
            raise ValueError(
                f"--out {out_dir}: is, contains or lies inside {option} {path}, which would be "
                f"replaced; --out must be a separate new folder"
            )
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
        raise ValueError(
            f"--out {out_dir}: exists and is not only {_KIND_NAMES[kind]} ({detail}); "
            "nothing there is deleted: pick a new folder, or remove it yourself"
        )


def may_replace(kind: str) -> ReplaceCheck:
    """The ``check_output_dir`` rule for ``kind``, as ``common.util.atomic_files`` applies it before a rename."""
    return lambda out_dir: check_output_dir(out_dir, kind)


# ----------------------------------------------------------------------------------------------
# This project's Megatron checkpoint


def shard_file_name(tp_rank: int, pp_rank: int) -> str:
    return f"model_tp{tp_rank}_pp{pp_rank}.safetensors"


def _meta(arch: LlamaArch, kind: str, tp: int, pp: int) -> dict:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": kind,
        "tp": tp,
        "pp": pp,
        "vocab_size": arch.vocab_size,
        "padded_vocab_size": padded_vocab_size(arch.vocab_size, tp),
    }


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
            tensor = full[full_source_name(name, arch, reward)]
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
    with atomic_dir(out_dir, may_replace("checkpoint")) as tmp:
        for tp_rank, pp_rank, tensors in iter_shards(full, arch, reward=reward, tp=tp, pp=pp, progress=progress):
            if dtype is not None:
                tensors = {k: v.to(dtype) for k, v in tensors.items()}
            save_safetensors(tensors, tmp / shard_file_name(tp_rank, pp_rank))
        write_json(tmp / "arch.json", dataclasses.asdict(arch))
        write_json(tmp / "meta.json", _meta(arch, "reward" if reward else "policy", tp, pp))
        if hf_config is not None:
            write_json(tmp / "hf_config.json", hf_config)
        if hf_generation_config is not None:
            write_json(tmp / "hf_generation_config.json", hf_generation_config)


def is_checkpoint(path: str | os.PathLike) -> bool:
    """This project's checkpoint, or a MindSpeed-LLM Megatron one (common/weights/mindspeed.py)."""
    from common.weights.mindspeed import is_mindspeed_checkpoint

    return is_own_checkpoint(path) or is_mindspeed_checkpoint(path)


def is_own_checkpoint(path: str | os.PathLike) -> bool:
    """A checkpoint in this project's format (meta.json + arch.json)."""
    return (Path(path) / "meta.json").is_file() and (Path(path) / "arch.json").is_file()


def open_checkpoint(path: str | os.PathLike) -> CheckpointReader:
    """The reader of a checkpoint folder: this project's format, or MindSpeed-LLM's Megatron format."""
    from common.weights.mindspeed import MindSpeedReader, is_mindspeed_checkpoint

    return MindSpeedReader(path) if is_mindspeed_checkpoint(path) else CheckpointReader(path)


class CheckpointReader(FullTensors):
    """Reads a Megatron checkpoint of this project: its arch and meta, and any parameter as the
    checkpoint's shard or as the merged full tensor; files are opened lazily."""

    def __init__(self, ckpt_dir: str | os.PathLike):
        from safetensors import safe_open

        self.dir = Path(ckpt_dir)
        if not self.dir.is_dir():
            raise ValueError(f"checkpoint {self.dir}: folder not found; check the path")
        if not is_own_checkpoint(self.dir) and (self.dir / "config.json").is_file():
            raise ValueError(
                f"checkpoint {self.dir}: is a Hugging Face model folder (config.json), not a checkpoint of this "
                f"project; it loads as it is, or convert it with `python -m tools.convert_checkpoint hf-to-mcore --hf {self.dir} --out <new folder>`"
            )
        if not is_own_checkpoint(self.dir):
            raise ValueError(
                f"checkpoint {self.dir}: no meta.json/arch.json; give a directory written by "
                "tools.convert_checkpoint or common.weights.convert.save_checkpoint"
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
        name = full_source_name(name, self.arch, self.reward)
        if name not in self._where:
            raise ValueError(f"checkpoint {self.dir}: no tensor {name!r}; the checkpoint is incomplete")
        shards = [self.shard(name, t) for t in range(self.tp)]
        return merge_shards(name, shards, self.arch.vocab_size, self.reward)


@torch.no_grad()
def load_checkpoint_into_model(model, ckpt_dir: str | os.PathLike, arch: LlamaArch) -> None:
    """Load this project's Megatron checkpoint into this rank's shards of `model`, whatever TP/PP
    the checkpoint was written with (same TP: shards copied; otherwise merged and re-sharded)."""
    from megatron.core import parallel_state

    reader = open_checkpoint(ckpt_dir)
    reward = isinstance(model, RewardModel)
    if reader.reward != reward:
        raise ValueError(
            f"checkpoint {ckpt_dir}: kind {reader.meta['kind']!r} but the model is a "
            f"{'reward model' if reward else 'policy'}; load a {'reward' if reward else 'policy'} checkpoint"
        )
    check_arch(reader.arch, arch, f"checkpoint {ckpt_dir}")
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
    """(arch, is_reward) of a HF model directory or of a checkpoint (``open_checkpoint``)."""
    if is_checkpoint(path):
        reader = open_checkpoint(path)
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
        if full_source_name(name, arch, reward) != name:
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
def save_checkpoint(model, out_dir: str | os.PathLike, arch: LlamaArch, *, hf_config: dict | None = None) -> None:
    """Collective over the model's world: write this project's Megatron checkpoint of a live
    model, each (TP, PP) rank of DP rank 0 writing its own shard file (no gathering). `out_dir`
    must be on a file system every rank sees; global rank 0 publishes it atomically."""
    from megatron.core import parallel_state

    reward = isinstance(model, RewardModel)
    gpt = model.gpt if reward else model
    out_dir = Path(out_dir)
    rank = torch.distributed.get_rank()
    tmp = temp_path(out_dir)
    if rank == 0:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        temp_dir(out_dir)
    torch.distributed.barrier()
    if parallel_state.get_data_parallel_rank() == 0:
        tensors = {name: p.detach().cpu().clone() for name, p in global_names(gpt)}
        path = tmp / shard_file_name(
            parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_pipeline_model_parallel_rank()
        )
        save_safetensors(tensors, path)
    torch.distributed.barrier()
    if rank == 0:
        tp = parallel_state.get_tensor_model_parallel_world_size()
        pp = parallel_state.get_pipeline_model_parallel_world_size()
        write_json(tmp / "arch.json", dataclasses.asdict(arch))
        write_json(tmp / "meta.json", _meta(arch, "reward" if reward else "policy", tp, pp))
        if hf_config is not None:
            write_json(tmp / "hf_config.json", hf_config)
        publish_dir(tmp, out_dir, may_replace("checkpoint"))
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
    config.json is re-emitted when the checkpoint kept it, else one is made from the arch. A
    MindSpeed-LLM Megatron checkpoint is read as well (common/weights/mindspeed.py)."""
    reader = open_checkpoint(ckpt_dir)
    full = reader.full_state_dict(progress)
    hf_sd = full_to_hf(full, reader.arch, reader.reward)
    if dtype is not None:
        hf_sd = {k: v.to(dtype) for k, v in hf_sd.items()}
    config = reader.optional_json("hf_config.json")
    if config is not None:
        check_arch(arch_from_hf_config(config), reader.arch, f"checkpoint {ckpt_dir} hf_config.json")
    else:
        config = hf_config_from_arch(reader.arch, reward=reader.reward)
    generation_config = reader.optional_json("hf_generation_config.json")
    marker = {"format": "odpo-hf-export", "version": 1, "source_kind": reader.meta["kind"]}
    save_hf(
        out_dir,
        hf_sd,
        config,
        tokenizer_dir,
        generation_config=generation_config,
        marker=marker,
        may_replace=may_replace("hf-export"),
    )


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
        out_dir,
        FullFromHF(hf, arch, reward),
        arch,
        reward=reward,
        tp=tp,
        pp=pp,
        hf_config=cfg,
        hf_generation_config=gen,
        dtype=dtype,
        progress=progress,
    )
    return arch, reward
