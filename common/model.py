"""Llama-3 as a Megatron-core GPTModel (local layer spec), the reward model, and weight loading.

The architecture: RMSNorm, SwiGLU MLP, grouped-query attention, no linear biases, RoPE with
optional Llama-3 frequency scaling, tied or untied embeddings, no dropout.

Weights are laid out in Megatron's tensor-parallel format; every initialisation and load goes
through one mapping, "full (TP=1) tensor of a parameter -> this rank's shard" (`_shard`), so a
model built with the same seed is the same function for every TP (and PP) layout, and the HF
loader is tested by the same code path.

Megatron needs the vocabulary padded (to a multiple of 128 * TP). Padded ids get logit
`finfo.min` (a forward hook on the output layer), so softmax, sampling and cross entropy never
put mass on them.
"""

from __future__ import annotations

import math
import re
import zlib

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig

from common.arch import LlamaArch
from common.attention import SDPAttention

VOCAB_PAD_MULTIPLE = 128  # Megatron's default make_vocab_size_divisible_by


def padded_vocab_size(vocab_size: int, tensor_parallel_size: int) -> int:
    """Megatron's rule: round up to a multiple of 128 * TP."""
    multiple = VOCAB_PAD_MULTIPLE * tensor_parallel_size
    return -(-vocab_size // multiple) * multiple


def llama3_inv_freq(arch: LlamaArch) -> torch.Tensor:
    """RoPE inverse frequencies [head_dim/2], with Llama-3 scaling when configured.

    Megatron's own `rope_scaling` hard-codes low=1, high=4 and original length 8192; this follows
    transformers' `_compute_llama3_parameters` with every factor taken from the arch.
    """
    dim = arch.head_dim
    inv_freq = 1.0 / (arch.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if arch.rope_scaling_factor is None:
        return inv_freq
    factor = arch.rope_scaling_factor
    low, high = arch.rope_low_freq_factor, arch.rope_high_freq_factor
    old_len = arch.rope_original_max_position_embeddings
    low_freq_wavelen = old_len / low
    high_freq_wavelen = old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _skip_init(tensor: torch.Tensor) -> None:
    """Init method for Megatron's pass: values come from `_init_weights` afterwards."""


def _transformer_config(arch: LlamaArch, dtype: torch.dtype) -> TransformerConfig:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if arch.num_query_groups % tp != 0:
        raise ValueError(
            f"model: num_query_groups {arch.num_query_groups} is not divisible by tensor "
            f"parallel size {tp}; use a TP size that divides the KV-head count"
        )
    if arch.num_layers % pp != 0:
        raise ValueError(
            f"model: num_layers {arch.num_layers} is not divisible by pipeline parallel size "
            f"{pp}; use a PP size that divides the layer count"
        )
    return TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=arch.init_method_std,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        sequence_parallel=False,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        # Parameters are allocated on CPU and filled by `_init_weights` (TP-layout independent);
        # callers move the model to their device. Megatron's initialisation pass still runs, with
        # no-op init methods, because it is also what tags parameters as tensor-parallel
        # (`tensor_model_parallel`, `partition_dim`); untagged shards are counted as duplicates,
        # e.g. only TP rank 0's shards would enter the gradient norm.
        use_cpu_initialization=True,
        perform_initialization=True,
        init_method=_skip_init,
        output_layer_init_method=_skip_init,
        embedding_init_method=_skip_init,
        # The fused kernels need Apex / Transformer Engine / CUDA.
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        cross_entropy_loss_fusion=False,
        attention_softmax_in_fp32=True,
    )


def _layer_spec():
    """Megatron's local (no Transformer Engine) Llama layer, with fused SDPA as core attention."""
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec


def _gpt(arch: LlamaArch, dtype: torch.dtype, *, tie: bool) -> GPTModel:
    config = _transformer_config(arch, dtype)
    model = GPTModel(
        config=config,
        transformer_layer_spec=_layer_spec(),
        vocab_size=padded_vocab_size(arch.vocab_size, config.tensor_model_parallel_size),
        max_sequence_length=arch.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=tie,
        position_embedding_type="rope",
        rotary_base=arch.rope_theta,
    )
    # RoPE frequencies computed here (before any forward: Megatron caches the embeddings per
    # length), so Llama-3 scaling honours every factor of the arch.
    model.rotary_pos_emb.inv_freq = llama3_inv_freq(arch)
    return model


# ----------------------------------------------------------------------------------------------
# Full-tensor <-> TP-shard mapping (the one place that knows Megatron's TP layout)


def _is_vocab_param(name: str, scalar_head: bool) -> bool:
    if name == "embedding.word_embeddings.weight":
        return True
    return name == "output_layer.weight" and not scalar_head


def _shard(
    name: str, full: torch.Tensor, padded_vocab: int, scalar_head: bool,
    *, rank: int | None = None, tp: int | None = None,
) -> torch.Tensor:
    """This TP rank's shard of parameter `name`, given its full (TP=1, unpadded) tensor.

    `rank`/`tp` default to this process's TP position; pass them to shard offline (converter).
    """
    if rank is None:
        rank = parallel_state.get_tensor_model_parallel_rank()
    if tp is None:
        tp = parallel_state.get_tensor_model_parallel_world_size()
    if _is_vocab_param(name, scalar_head):
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


def merge_shards(
    name: str, shards: list[torch.Tensor], vocab_size: int, scalar_head: bool
) -> torch.Tensor:
    """The full (TP=1, unpadded) tensor of parameter `name` from its TP shards (rank order);
    the exact inverse of `_shard`."""
    if _is_vocab_param(name, scalar_head):
        return torch.cat(shards, dim=0)[:vocab_size]
    if name.endswith("self_attention.linear_qkv.weight"):
        return torch.cat(shards, dim=0)
    if name.endswith("mlp.linear_fc1.weight"):
        gates, ups = zip(*(shard.chunk(2, dim=0) for shard in shards))
        return torch.cat([*gates, *ups], dim=0)
    if name.endswith(("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")):
        return torch.cat(shards, dim=1)
    return shards[0]


def _full_shape(name: str, local: torch.Size, arch: LlamaArch, scalar_head: bool) -> tuple:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if _is_vocab_param(name, scalar_head):
        return (arch.vocab_size, local[1])
    if name.endswith(("self_attention.linear_qkv.weight", "mlp.linear_fc1.weight")):
        return (local[0] * tp, local[1])
    if name.endswith(("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")):
        return (local[0], local[1] * tp)
    return tuple(local)


def _global_names(gpt: GPTModel):
    """(global name, local parameter) pairs; global names use the model-wide layer index, so a
    pipeline stage's `decoder.layers.0` is named after the layer it really is."""
    for name, param in gpt.named_parameters():
        match = re.match(r"decoder\.layers\.(\d+)\.(.*)", name)
        if match:
            layer = gpt.decoder.layers[int(match.group(1))].layer_number - 1  # 1-based
            name = f"decoder.layers.{layer}.{match.group(2)}"
        yield name, param


@torch.no_grad()
def _init_weights(gpt: GPTModel, arch: LlamaArch, seed: int, scalar_head: bool) -> None:
    """Megatron's init (normal(0, std), output projections std/sqrt(2L), norms 1), drawn per
    parameter from a generator seeded by (seed, global name) on the full tensor, then sharded."""
    padded_vocab = gpt.vocab_size
    for name, param in _global_names(gpt):
        seed_name = name
        if name == "output_layer.weight" and gpt.share_embeddings_and_output_weights:
            seed_name = "embedding.word_embeddings.weight"  # the last stage's tied copy
        shape = _full_shape(name, param.shape, arch, scalar_head)
        if name.endswith("layernorm.weight"):
            full = torch.ones(shape)
        else:
            std = arch.init_method_std
            if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
                std /= math.sqrt(2.0 * arch.num_layers)
            generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{seed_name}".encode()))
            full = torch.empty(shape).normal_(0.0, std, generator=generator)
        param.copy_(_shard(name, full, padded_vocab, scalar_head))


def _mask_padded_vocab(gpt: GPTModel, vocab_size: int) -> None:
    """Give padded vocabulary ids the lowest logit, in every output-layer call.

    Works on both layouts the output layer returns: the local TP shard [.., V/tp] and the
    gathered logits [.., V] (generation). finfo.min rather than -inf keeps p*log(p) finite.
    """
    padded = gpt.vocab_size
    if padded == vocab_size:
        return

    def hook(module, args, output):
        logits, bias = output
        width = logits.shape[-1]
        start = 0 if width == padded else parallel_state.get_tensor_model_parallel_rank() * width
        first_pad = max(vocab_size - start, 0)
        if first_pad < width:
            logits[..., first_pad:] = torch.finfo(logits.dtype).min
        return logits, bias

    gpt.output_layer.register_forward_hook(hook)


def build_policy(
    arch: LlamaArch, *, dtype: torch.dtype, seed: int, device: torch.device | None = None
) -> GPTModel:
    """The Llama policy (also the reference) for this rank's TP/PP position.

    Model-parallel state must be initialised. Same seed -> same function for every TP/PP layout.
    The model is built on CPU and moved to `device` when given.
    """
    gpt = _gpt(arch, dtype, tie=arch.tie_word_embeddings)
    _init_weights(gpt, arch, seed, scalar_head=False)
    if gpt.post_process:
        _mask_padded_vocab(gpt, arch.vocab_size)
    return gpt if device is None else gpt.to(device)


# ----------------------------------------------------------------------------------------------
# Reward model


class ScalarHead(torch.nn.Module):
    """hidden -> 1 score, replicated on every TP rank; called where GPTModel calls its output
    layer, so it takes (and ignores) the output layer's keyword arguments."""

    def __init__(self, hidden_size: int, dtype: torch.dtype):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(1, hidden_size, dtype=dtype))

    def forward(self, hidden_SBH, weight=None, runtime_gather_output=None):
        return F.linear(hidden_SBH, self.weight), None


class RewardModel(torch.nn.Module):
    """GPT trunk (embedding, decoder, final norm) + a scalar head: one score per position."""

    def __init__(self, gpt: GPTModel):
        super().__init__()
        self.gpt = gpt

    @property
    def config(self):  # Megatron's schedules read the model's TransformerConfig
        return self.gpt.config

    def set_input_tensor(self, input_tensor) -> None:  # pipeline schedules call this
        self.gpt.set_input_tensor(input_tensor)

    def forward(self, input_ids_BT, position_ids_BT, attention_mask):
        """scores [B, T] in fp32 (on non-last pipeline stages: the hidden states to send on)."""
        out = self.gpt(input_ids_BT, position_ids_BT, attention_mask)
        if not self.gpt.post_process:
            return out
        return out.squeeze(-1).float()


def build_reward_model(
    arch: LlamaArch, *, dtype: torch.dtype, seed: int, device: torch.device | None = None
) -> RewardModel:
    """A reward model (untied trunk + scalar head); model-parallel state must be initialised."""
    gpt = _gpt(arch, dtype, tie=False)
    if gpt.post_process:
        gpt.output_layer = ScalarHead(arch.hidden_size, dtype)
    _init_weights(gpt, arch, seed, scalar_head=True)
    model = RewardModel(gpt)
    return model if device is None else model.to(device)


# ----------------------------------------------------------------------------------------------
# Hugging Face Llama weights


def _hf_full_tensor(name: str, hf: dict, arch: LlamaArch, scalar_head: bool) -> torch.Tensor:
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


@torch.no_grad()
def load_hf_llama_state_dict(
    model: GPTModel | RewardModel, hf_state_dict: dict, arch: LlamaArch
) -> None:
    """Copy HF Llama weights (LlamaForCausalLM, or LlamaForSequenceClassification for a
    RewardModel) into this rank's shards of `model` (any TP, any PP stage)."""
    scalar_head = isinstance(model, RewardModel)
    gpt = model.gpt if scalar_head else model
    for name, param in _global_names(gpt):
        full = _hf_full_tensor(name, hf_state_dict, arch, scalar_head)
        expected = _full_shape(name, param.shape, arch, scalar_head)
        if tuple(full.shape) != expected:
            raise ValueError(
                f"HF Llama weights: {name} has shape {tuple(full.shape)}, the model expects "
                f"{expected}; the checkpoint's config.json does not match the model arch"
            )
        param.copy_(_shard(name, full.to(param.dtype), gpt.vocab_size, scalar_head))
