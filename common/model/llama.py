"""Llama-3 as a Megatron-core GPTModel (local layer spec), the reward model, and weight loading.

The architecture: RMSNorm, SwiGLU MLP, grouped-query attention, no linear biases, RoPE with
optional Llama-3 frequency scaling, tied or untied embeddings, no dropout.

Weights are laid out in Megatron's tensor-parallel format; every initialisation and load goes
through one mapping, "full (TP=1) tensor of a parameter -> this rank's shard" (`common.model.weight_layout.shard`), so a
model built with the same seed is the same function for every TP (and PP) layout, and the HF
loader is tested by the same code path.

Megatron needs the vocabulary padded (to a multiple of 128 * TP). Padded ids get logit
`finfo.min` (a forward hook on the output layer), so softmax, sampling and cross entropy never
put mass on them.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.tensor_parallel import layers as tp_layers
from megatron.core.transformer import TransformerConfig

from common.config.arch import LlamaArch, layout_problem
from common.model.attention import SDPAttention
from common.model.weight_layout import full_shape, global_names, hf_full_tensor, padded_vocab_size, shard


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


@contextlib.contextmanager
def _tag_only_cpu_init():
    """While building: Megatron's CPU initialisation of a parallel weight only tags it.

    With ``use_cpu_initialization`` Megatron allocates a full-size master weight per parallel weight,
    runs the init method on it (``_skip_init``), splits it and copies this rank's part in: every
    weight allocated and copied twice, ~0.2 s per model of the BENCH size, for values
    ``_init_weights`` (or a checkpoint) then overwrites. What the pass must still do is tag the
    weight as tensor-parallel (``tensor_model_parallel``, ``partition_dim``, ``partition_stride``):
    untagged shards are counted as duplicates, e.g. only TP rank 0's enter the gradient norm. This
    does exactly that, with Megatron's own ``set_tensor_model_parallel_attributes``.
    """

    def tag_only(weight, output_size, input_size, per_partition_size, partition_dim, init_method, stride=1,
                 return_master_weight=False, *, skip_set_tensor_parallel_attributes=False, **_):  # fmt: skip
        if not skip_set_tensor_parallel_attributes:
            tp_layers.set_tensor_model_parallel_attributes(
                tensor=weight, is_parallel=True, dim=partition_dim, stride=stride
            )

    original = tp_layers._initialize_affine_weight_cpu
    tp_layers._initialize_affine_weight_cpu = tag_only
    try:
        yield
    finally:
        tp_layers._initialize_affine_weight_cpu = original


def _transformer_config(arch: LlamaArch, dtype: torch.dtype) -> TransformerConfig:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    problem = layout_problem(arch, tp, pp)
    if problem:
        raise ValueError(f"model: {problem[1]}; use a parallel layout that divides the model")
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
        # callers move the model to their device. Megatron's initialisation pass still runs, as
        # tagging only (`_tag_only_cpu_init`): it is what tags parameters as tensor-parallel.
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
    with _tag_only_cpu_init():
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
    # Megatron's local spec builds its norms as torch.nn.RMSNorm without a dtype: fp32 weights in a
    # bf16 model (Megatron's own training casts the whole model in its Float16Module). Cast them, so
    # that every weight has the model's dtype: torch's fused RMSNorm kernel needs input and weight of
    # one dtype, and Megatron's mixed-precision optimizer then keeps an fp32 main copy of every weight.
    for param in model.parameters():
        if param.dtype != dtype:
            param.data = param.data.to(dtype)
    # RoPE frequencies computed here (before any forward: Megatron caches the embeddings per
    # length), so Llama-3 scaling honours every factor of the arch.
    model.rotary_pos_emb.inv_freq = llama3_inv_freq(arch)
    return model


def _init_weights(gpt: GPTModel, arch: LlamaArch, seed: int, scalar_head: bool) -> None:
    """Megatron's init (normal(0, std), output projections std/sqrt(2L), norms 1), drawn per
    parameter from a generator seeded by (seed, global name) on the full tensor, then sharded.

    Where the shard is the full tensor (TP 1, no vocabulary padding) and fp32, the values are drawn
    straight into the parameter: the same numbers (the same generator over the same number of
    elements), without a full-size temporary and a copy (~0.1 s per model of the BENCH size).
    Parameters are drawn on as many threads as torch computes with, largest first: each has its
    own generator, so the values do not depend on the order, and drawing (single-threaded in
    torch) is most of a model's build (the two vocabulary-sized matrices)."""
    padded_vocab = gpt.vocab_size
    whole = parallel_state.get_tensor_model_parallel_world_size() == 1

    @torch.no_grad()  # on each drawing thread: grad mode is per thread
    def draw(name: str, param: torch.nn.Parameter) -> None:
        seed_name = name
        if name == "output_layer.weight" and gpt.share_embeddings_and_output_weights:
            seed_name = "embedding.word_embeddings.weight"  # the last stage's tied copy
        shape = full_shape(name, param.shape, arch, scalar_head)
        in_place = (
            whole and tuple(param.shape) == tuple(shape) and param.dtype == torch.float32 and param.is_contiguous()
        )
        if name.endswith("layernorm.weight"):
            full = param if in_place else torch.empty(shape)
            full.fill_(1.0)
        else:
            std = arch.init_method_std
            if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
                std /= math.sqrt(2.0 * arch.num_layers)
            generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{seed_name}".encode()))
            full = (param if in_place else torch.empty(shape)).normal_(0.0, std, generator=generator)
        if not in_place:
            param.copy_(shard(name, full, padded_vocab, scalar_head))

    largest_first = sorted(global_names(gpt), key=lambda item: -item[1].numel())
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        list(pool.map(lambda item: draw(*item), largest_first))  # re-raises a drawing thread's error


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
    arch: LlamaArch,
    *,
    dtype: torch.dtype,
    seed: int,
    device: torch.device | None = None,
    weights_from: GPTModel | None = None,
) -> GPTModel:
    """The Llama policy (also the reference) for this rank's TP/PP position.

    Model-parallel state must be initialised. Same seed -> same function for every TP/PP layout.
    The model is built on CPU and moved to `device` when given. ``weights_from``: a policy of the
    same arch and layout whose current weights this one takes instead of drawing its own.
    """
    gpt = _gpt(arch, dtype, tie=arch.tie_word_embeddings)
    if weights_from is None:
        _init_weights(gpt, arch, seed, scalar_head=False)
    else:
        with torch.no_grad():
            for (name, param), (source_name, source) in zip(
                gpt.named_parameters(), weights_from.named_parameters(), strict=True
            ):
                if name != source_name or param.shape != source.shape:
                    raise ValueError(
                        f"weights_from: {source_name} {tuple(source.shape)} does not match {name} {tuple(param.shape)}"
                    )
                param.copy_(source)
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


@torch.no_grad()
def load_hf_llama_state_dict(model: GPTModel | RewardModel, hf_state_dict: dict, arch: LlamaArch) -> None:
    """Copy HF Llama weights (LlamaForCausalLM, or LlamaForSequenceClassification for a
    RewardModel) into this rank's shards of `model` (any TP, any PP stage)."""
    scalar_head = isinstance(model, RewardModel)
    gpt = model.gpt if scalar_head else model
    for name, param in global_names(gpt):
        full = hf_full_tensor(name, hf_state_dict, arch, scalar_head)
        expected = full_shape(name, param.shape, arch, scalar_head)
        if tuple(full.shape) != expected:
            raise ValueError(
                f"HF Llama weights: {name} has shape {tuple(full.shape)}, the model expects "
                f"{expected}; the checkpoint's config.json does not match the model arch"
            )
        param.copy_(shard(name, full.to(param.dtype), gpt.vocab_size, scalar_head))
