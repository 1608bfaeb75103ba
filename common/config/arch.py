"""The Llama-3 architecture description: one dataclass, used as the config schema's ``model``
section, by the model builder, the checkpoint converter and ``arch.json``. No torch here, so the
config can be loaded and checked before anything heavy is imported."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LlamaArch:
    """Llama-3 architecture; field names are also the ``model`` config keys."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float = 500000.0
    rope_scaling_factor: float | None = None  # Llama-3 RoPE scaling; None = off
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    init_method_std: float = 0.02

    def __post_init__(self) -> None:
        check_arch(self, "model")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


POSITIVE_FIELDS = (
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "vocab_size",
    "max_position_embeddings",
)  # fmt: skip


def check_arch(m, where: str) -> None:
    """Shape rules of a LlamaArch (or a config node with its fields); messages name ``where``."""
    for name in POSITIVE_FIELDS:
        if getattr(m, name) < 1:
            raise ValueError(f"{where}.{name}={getattr(m, name)}: must be >= 1")
    if m.hidden_size % m.num_attention_heads:
        raise ValueError(
            f"{where}.hidden_size={m.hidden_size} is not divisible by num_attention_heads={m.num_attention_heads}; "
            "pick sizes with hidden_size = heads * head_dim"
        )
    if m.num_attention_heads % m.num_query_groups:
        raise ValueError(
            f"{where}.num_attention_heads={m.num_attention_heads} is not divisible by "
            f"num_query_groups={m.num_query_groups} (GQA); use a divisor of the head count"
        )
    if m.rope_scaling_factor is not None and m.rope_scaling_factor <= 1.0:
        raise ValueError(
            f"{where}.rope_scaling_factor={m.rope_scaling_factor} must be > 1 (or null to switch Llama-3 RoPE scaling off)"
        )


def layout_problem(arch, tp: int, pp: int) -> tuple[str, str] | None:
    """``(which, why)`` when ``arch`` cannot be split over tensor-parallel size ``tp`` x pipeline
    stages ``pp`` (``which`` is ``"tp"`` or ``"pp"``), else None. The one home of this rule: the
    config, the preflight weight check, the converter and the model builder ask here and each add
    their own "how to fix"."""
    if tp < 1:
        return "tp", f"TP={tp} must be >= 1"
    if pp < 1:
        return "pp", f"PP={pp} must be >= 1"
    if arch.num_attention_heads % tp or arch.num_query_groups % tp:
        return "tp", (
            f"TP={tp} must divide the {arch.num_attention_heads} attention heads and the "
            f"{arch.num_query_groups} KV heads (num_query_groups)"
        )
    if arch.num_layers % pp:
        return "pp", f"PP={pp} must divide the {arch.num_layers} layers"
    return None


def parameter_count(m, pp: int = 1) -> int:
    """Parameters of a policy of architecture ``m`` (a ``model`` section), over all its shards: with
    PP > 1 a tied output layer is a second copy of the embedding on the last stage."""
    h, groups_dim = m.hidden_size, m.hidden_size // m.num_attention_heads * m.num_query_groups
    layer = 2 * h * h + 2 * h * groups_dim + 3 * h * m.ffn_hidden_size + 2 * h  # q, o; k, v; SwiGLU; 2 norms
    embedding = m.vocab_size * h
    output = 0 if m.tie_word_embeddings and pp == 1 else embedding
    return embedding + m.num_layers * layer + h + output
