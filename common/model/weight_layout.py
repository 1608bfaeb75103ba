"""Where each weight of the Llama GPT model lives: the one place that knows Megatron's layout.

- names: a parameter's *global* name uses the model-wide layer index (``global_names``), so a
  pipeline stage's ``decoder.layers.0`` is named after the layer it really is;
- tensor parallelism: "full (TP=1, unpadded) tensor -> this rank's shard" (``shard``) and its exact
  inverse (``merge_shards``); every initialisation, load, re-shard and export goes through them;
- Hugging Face: which HF Llama tensors make each Megatron parameter (``hf_full_tensor``);
- the padded vocabulary (Megatron pads to a multiple of 128 * TP).

Used by the model builder (common/model/llama.py), the converter and checkpoints (common/weights/convert.py) and
the weight sync to generating ranks (common/cluster/workers.py).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from megatron.core import parallel_state

from common.config.arch import LlamaArch, layout_problem

VOCAB_PAD_MULTIPLE = 128  # Megatron's default make_vocab_size_divisible_by


def padded_vocab_size(vocab_size: int, tensor_parallel_size: int) -> int:
    """Megatron's rule: round up to a multiple of 128 * TP."""
    multiple = VOCAB_PAD_MULTIPLE * tensor_parallel_size
    return -(-vocab_size // multiple) * multiple


# ----------------------------------------------------------------------------------------------
# Full-tensor <-> TP-shard mapping (the one place that knows Megatron's TP layout)


def is_vocab_param(name: str, scalar_head: bool) -> bool:
    if name == "embedding.word_embeddings.weight":
        return True
    return name == "output_layer.weight" and not scalar_head


def shard(
    name: str,
    full: torch.Tensor,
    padded_vocab: int,
    scalar_head: bool,
    *,
    rank: int | None = None,
    tp: int | None = None,
) -> torch.Tensor:
    """This TP rank's shard of parameter `name`, given its full (TP=1, unpadded) tensor.

    `rank`/`tp` default to this process's TP position; pass them to shard offline (converter).
    """
    if rank is None:
        rank = parallel_state.get_tensor_model_parallel_rank()
    if tp is None:
        tp = parallel_state.get_tensor_model_parallel_world_size()
    if is_vocab_param(name, scalar_head):
        # Vocab-parallel rows; padded rows are zeros.
        full = F.pad(full, (0, 0, 0, padded_vocab - full.shape[0]))
        return full.chunk(tp, dim=0)[rank]
    if name.endswith("self_attention.linear_qkv.weight"):
        # Rows are grouped per query group [q_g ; k_g ; v_g]; each rank holds whole groups.
        return full.chunk(tp, dim=0)[rank]
    if name.endswith("mlp.linear_fc1.weight"):
        # Rows are [gate ; up]; each rank holds [gate shard ; up shard].
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]], dim=0)
    if name.endswith(("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")):
        return full.chunk(tp, dim=1)[rank]  # row-parallel: input columns are split
    return full  # norms and the scalar reward head are replicated


def merge_shards(name: str, shards: list[torch.Tensor], vocab_size: int, scalar_head: bool) -> torch.Tensor:
    """The full (TP=1, unpadded) tensor of parameter `name` from its TP shards (rank order);
    the exact inverse of `shard`."""
    if is_vocab_param(name, scalar_head):
        return torch.cat(shards, dim=0)[:vocab_size]
    if name.endswith("self_attention.linear_qkv.weight"):
        return torch.cat(shards, dim=0)
    if name.endswith("mlp.linear_fc1.weight"):
        gates, ups = zip(*(shard.chunk(2, dim=0) for shard in shards))
        return torch.cat([*gates, *ups], dim=0)
    if name.endswith(("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")):
        return torch.cat(shards, dim=1)
    return shards[0]


def full_shape(name: str, local: torch.Size, arch: LlamaArch, scalar_head: bool) -> tuple:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if is_vocab_param(name, scalar_head):
        return (arch.vocab_size, local[1])
    if name.endswith(("self_attention.linear_qkv.weight", "mlp.linear_fc1.weight")):
        return (local[0] * tp, local[1])
    if name.endswith(("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")):
        return (local[0], local[1] * tp)
    return tuple(local)


def global_names(gpt):
    """(global name, local parameter) pairs; global names use the model-wide layer index, so a
    pipeline stage's `decoder.layers.0` is named after the layer it really is."""
    for name, param in gpt.named_parameters():
        match = re.match(r"decoder\.layers\.(\d+)\.(.*)", name)
        if match:
            layer = gpt.decoder.layers[int(match.group(1))].layer_number - 1  # 1-based
            name = f"decoder.layers.{layer}.{match.group(2)}"
        yield name, param


# ----------------------------------------------------------------------------------------------
# Hugging Face Llama weights


def hf_full_tensor(name: str, hf: dict, arch: LlamaArch, scalar_head: bool) -> torch.Tensor:
    """The full (TP=1) Megatron tensor for global parameter `name` from a HF Llama state dict."""

    def get(key: str) -> torch.Tensor:
        if key not in hf:
            raise ValueError(
                f"HF Llama weights: missing {key!r} (needed for {name}); pass the state dict of "
                "a LlamaForCausalLM (policy) or LlamaForSequenceClassification (reward model)"
            )
        return hf[key]

    if name == "embedding.word_embeddings.weight":
        return get("model.embed_tokens.weight")
    if name == "output_layer.weight":
        if scalar_head:
            return get("score.weight")
        if arch.tie_word_embeddings:
            return get("model.embed_tokens.weight")
        return get("lm_head.weight")
    if name == "decoder.final_layernorm.weight":
        return get("model.norm.weight")
    match = re.match(r"decoder\.layers\.(\d+)\.(.*)", name)
    if match is None:
        raise ValueError(f"HF Llama weights: no mapping for Megatron parameter {name!r}")
    prefix, rest = f"model.layers.{match.group(1)}.", match.group(2)
    simple = {
        "input_layernorm.weight": "input_layernorm.weight",
        "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
        "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
        "mlp.linear_fc2.weight": "mlp.down_proj.weight",
    }
    if rest in simple:
        return get(prefix + simple[rest])
    if rest == "mlp.linear_fc1.weight":
        return torch.cat([get(prefix + "mlp.gate_proj.weight"), get(prefix + "mlp.up_proj.weight")])
    if rest == "self_attention.linear_qkv.weight":
        groups, hidden = arch.num_query_groups, arch.hidden_size
        q = get(prefix + "self_attn.q_proj.weight").reshape(groups, -1, hidden)
        k = get(prefix + "self_attn.k_proj.weight").reshape(groups, -1, hidden)
        v = get(prefix + "self_attn.v_proj.weight").reshape(groups, -1, hidden)
        return torch.cat([q, k, v], dim=1).reshape(-1, hidden)  # per group [q_g ; k_g ; v_g]
    raise ValueError(f"HF Llama weights: no mapping for Megatron parameter {name!r}")


# ----------------------------------------------------------------------------------------------
# Which parameters a pipeline stage holds (model-wide names)


LAYER_PARAMS = (
    "input_layernorm.weight",
    "self_attention.linear_qkv.weight",
    "self_attention.linear_proj.weight",
    "pre_mlp_layernorm.weight",
    "mlp.linear_fc1.weight",
    "mlp.linear_fc2.weight",
)


def check_layout(arch: LlamaArch, tp: int, pp: int) -> None:
    problem = layout_problem(arch, tp, pp)
    if problem:
        raise ValueError(f"layout: {problem[1]}; use a --{problem[0]} that divides it")


def megatron_param_names(arch: LlamaArch, *, reward: bool, pp: int = 1, pp_rank: int = 0) -> list[str]:
    """Model-wide names of the parameters pipeline stage `pp_rank` of `pp` holds (what
    `weight_layout.global_names` yields for a model built there). Tied embeddings: the last stage of a
    pipeline (PP > 1) holds its own copy `output_layer.weight`; with PP = 1 there is none."""
    check_layout(arch, 1, pp)
    per_stage = arch.num_layers // pp
    first, last = pp_rank == 0, pp_rank == pp - 1
    names = ["embedding.word_embeddings.weight"] if first else []
    for layer in range(pp_rank * per_stage, (pp_rank + 1) * per_stage):
        names += [f"decoder.layers.{layer}.{param}" for param in LAYER_PARAMS]
    if last:
        names.append("decoder.final_layernorm.weight")
        if reward or not arch.tie_word_embeddings or not first:
            names.append("output_layer.weight")
    return names


def full_source_name(name: str, arch: LlamaArch, reward: bool) -> str:
    """The full-form name a parameter's values come from (a tied output layer's copy at PP > 1
    is the embedding)."""
    if name == "output_layer.weight" and not reward and arch.tie_word_embeddings:
        return "embedding.word_embeddings.weight"
    return name
