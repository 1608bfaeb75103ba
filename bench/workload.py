"""The workloads of bench/vs_trl.py, as both of its sides need them.

- ``bench``: the BENCH CONFIG (../shared/spec/bench.md) on CPU, from the constants below. The project
  side is ``./run.sh tiny --overlay bench`` (recipes/tiny/bench.yaml holds the same numbers); TRL's
  side builds Hugging Face models of the same shapes from these constants.
- ``one_gpu``: the llama32_1b recipe's ``one_gpu`` overlay (recipes/llama32_1b/one_gpu.yaml), read
  from the recipe's config + overlay by the project's own loader (``workload``): the model shape,
  dtype, batch, lengths, sampling, DPO and optimizer settings both sides run with. ``scale="toy"`` is
  the same overlay with the model at ``TOY_OVERRIDES`` (2 layers, hidden 64, fp32), as
  bench/device_run.sh's SCALE=toy loop runs it; on CPU the dtype is fp32 (bf16 is refused there).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_MT_BENCH = Path("shared") / "datasets" / "mt_bench" / "question.jsonl"
# beside the checkout on development and CI machines only (../shared/datasets; a git worktree
# deeper down finds it in the nearest folder above that has it)
DEFAULT_PROMPTS = next((d / _MT_BENCH for d in ROOT.parents if (d / _MT_BENCH).is_file()), ROOT.parent / _MT_BENCH)
TOKENIZER = ROOT / "assets" / "llama3_tokenizer"

ARCH = dict(
    num_layers=4, hidden_size=256, ffn_hidden_size=1024, num_attention_heads=8, num_query_groups=4,
    vocab_size=128256, max_position_embeddings=1024, rope_theta=500000.0,
)  # fmt: skip
PROMPTS_PER_ITER = 8
SAMPLES = 2
NEW_TOKENS = 64
MAX_LENGTH = 512  # prompt + response (TRL's default max_length); longer prompts are left out on both sides
TEMPERATURE, TOP_P, TOP_K = 0.9, 1.0, 0
BETA, LR, MISSING_EOS_PENALTY, MAX_GRAD_NORM = 0.1, 5e-7, 1.0, 1.0
POLICY_SEED, REWARD_SEED = 0, 1
THREADS = 2  # CPU threads in total on each side


def read_prompts(path: Path) -> list:
    """Prompts of a JSONL file: MT-Bench rows (``turns``: the first turn), ``prompt`` strings or
    chat message lists (as the project's prompt files may hold: data/prompts/tiny_prompts.jsonl), or
    ``question`` strings (GSM8K)."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(
            f"error: prompt file {path} not found. The default is MT-Bench's question.jsonl in "
            f"../shared/datasets/mt_bench/ beside the checkout (development machines only); pass "
            '--prompts FILE.jsonl with one {"prompt": text} (or "question", or MT-Bench\'s "turns") per line'
        )
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        text = row["turns"][0] if "turns" in row else row.get("prompt", row.get("question"))
        if not isinstance(text, (str, list)) or not text:
            raise SystemExit(
                f"error: {path}:{n}: no 'turns' list and no 'prompt' (string or messages) or 'question' string"
            )
        prompts.append(text)
    return prompts


def fitting_prompts(
    prompts: list, tok, new_tokens: int = NEW_TOKENS, max_length: int = MAX_LENGTH
) -> tuple[list, list[int]]:
    """The prompts whose chat-template rendering leaves room for `new_tokens` within `max_length`
    (the project's own rule: a prompt longer than seq_length - new tokens is dropped), and their lengths."""
    from common.prompts.tokenizer import render_prompt_ids

    kept, lengths = [], []
    for p in prompts:
        n = len(render_prompt_ids(tok, p))
        if n + new_tokens <= max_length:
            kept.append(p)
            lengths.append(n)
    return kept, lengths


# ------------------------------------------------------------------------------------ workloads

WORKLOADS = ("bench", "one_gpu")
SCALES = ("full", "toy")
DEVICES = ("cpu", "cuda")
ONE_GPU_RECIPE = ROOT / "recipes" / "llama32_1b"
ONE_GPU_OVERLAY = "one_gpu"
# --scale toy: the one_gpu overlay's model at toy size in fp32 (bench/device_run.sh's SCALE=toy loop)
TOY_OVERRIDES = (
    "training.dtype=fp32", "model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=256",
    "model.num_attention_heads=4", "model.num_query_groups=2",
)  # fmt: skip
# the architecture fields of the BENCH CONFIG that ARCH leaves at LlamaArch's defaults
_BENCH_ARCH_REST = dict(
    rope_scaling_factor=None, rms_norm_eps=1e-5, tie_word_embeddings=False, init_method_std=0.02
)  # fmt: skip


@dataclass(frozen=True)
class Workload:
    """What both sides of bench/vs_trl.py run, and how this project's side is launched.

    The fields from ``device`` to ``no_shuffle`` are the settings both sides must share
    (``shared()``; ``settings_from_config`` reads them from a recipe config or a run's config.yaml)."""

    name: str  # "bench" | "one_gpu"
    scale: str  # "full" | "toy" (one_gpu only)
    device: str  # "cpu" | "cuda"
    dtype: str  # "fp32" | "bf16" | "fp16": every model's weights and compute
    arch: dict  # the policy's LlamaArch fields (the config's `model` section); the reference is a copy
    reward_arch: dict  # the reward model's (a LlamaForSequenceClassification with one label on TRL's side)
    prompts_per_iter: int
    samples: int  # responses per prompt
    new_tokens: int  # most tokens sampled per response
    max_length: int  # prompt + response
    temperature: float
    top_p: float
    top_k: int  # 0 = off
    missing_eos_penalty: float
    beta: float
    loss_type: str
    lr: float
    lr_schedule: str
    max_grad_norm: float
    adam_betas: tuple[float, float]
    weight_decay: float
    steps_per_iter: int  # optimizer steps per iteration
    policy_seed: int
    reward_seed: int
    no_shuffle: bool  # prompts in file order
    tokenizer: str  # the tokenizer folder
    prompts: str  # the default prompt file
    recipe: str  # this project's side: ./run.sh <recipe> --overlay <overlay> [overrides...]
    overlay: str
    overrides: tuple[str, ...]

    def shared(self) -> dict:
        """The settings both sides must share (every field but the name, scale, paths and command)."""
        skip = ("name", "scale", "tokenizer", "prompts", "recipe", "overlay", "overrides")
        return {k: v for k, v in asdict(self).items() if k not in skip}


def settings_from_config(cfg) -> dict:
    """The shared settings of a Workload read from a loaded recipe config (or a run's config.yaml,
    which is one, fully resolved): the keys of ``Workload.shared()``."""
    from omegaconf import OmegaConf

    from common.config.roles import max_new_tokens, optimizer_steps_per_iter

    t, ar = cfg.training, cfg.actor_rollout_ref.actor_rollout
    reward_model = cfg.reward.model if cfg.reward.model is not None else cfg.model
    return {
        "device": t.device, "dtype": t.dtype, "arch": OmegaConf.to_container(cfg.model),
        "reward_arch": OmegaConf.to_container(reward_model), "prompts_per_iter": t.global_batch_size,
        "samples": ar.n_samples_per_prompt, "new_tokens": max_new_tokens(cfg), "max_length": t.seq_length,
        "temperature": ar.temperature, "top_p": ar.top_p, "top_k": ar.top_k, "missing_eos_penalty": ar.missing_eos_penalty,
        "beta": cfg.algorithm.beta, "loss_type": cfg.algorithm.loss_type, "lr": ar.lr, "lr_schedule": ar.lr_decay_style,
        "max_grad_norm": ar.clip_grad, "adam_betas": (ar.adam_beta1, ar.adam_beta2), "weight_decay": ar.weight_decay,
        "steps_per_iter": optimizer_steps_per_iter(cfg), "policy_seed": t.seed, "reward_seed": t.seed + 1,
        "no_shuffle": ar.no_shuffle,
    }  # fmt: skip


def bench_workload() -> Workload:
    """The BENCH CONFIG on CPU, from this module's constants (what vs_trl.py ran before it had workloads)."""
    arch = {**ARCH, **_BENCH_ARCH_REST}
    return Workload(
        name="bench", scale="full", device="cpu", dtype="fp32", arch=arch, reward_arch=arch,
        prompts_per_iter=PROMPTS_PER_ITER, samples=SAMPLES, new_tokens=NEW_TOKENS, max_length=MAX_LENGTH,
        temperature=TEMPERATURE, top_p=TOP_P, top_k=TOP_K, missing_eos_penalty=MISSING_EOS_PENALTY, beta=BETA,
        loss_type="sigmoid", lr=LR, lr_schedule="constant", max_grad_norm=MAX_GRAD_NORM, adam_betas=(0.9, 0.999),
        weight_decay=0.0, steps_per_iter=1, policy_seed=POLICY_SEED, reward_seed=REWARD_SEED, no_shuffle=True,
        tokenizer=str(TOKENIZER), prompts=str(DEFAULT_PROMPTS), recipe="tiny", overlay="bench", overrides=(),
    )  # fmt: skip


def one_gpu_overrides(scale: str, device: str) -> list[str]:
    """The key=value overrides of the one_gpu overlay on `device` at `scale` (fp32 on CPU: the project
    refuses bf16 there)."""
    overrides = [f"training.device={device}"]
    if scale == "toy":
        overrides += TOY_OVERRIDES
    elif device == "cpu":
        overrides.append("training.dtype=fp32")
    return overrides


def one_gpu_workload(scale: str, device: str) -> Workload:
    """The llama32_1b recipe's one_gpu overlay, read from its config + overlay (+ the scale's and
    device's overrides) by the project's loader, which validates it as ./run.sh would."""
    from common.config.load import load_config, overlay_file

    overrides = one_gpu_overrides(scale, device)
    cfg = load_config(ONE_GPU_RECIPE / "config.yaml", overrides, overlay_file(ONE_GPU_RECIPE, ONE_GPU_OVERLAY))
    return Workload(
        name="one_gpu", scale=scale, **settings_from_config(cfg), tokenizer=cfg.training.tokenizer_name_or_path,
        prompts=cfg.actor_rollout_ref.actor_rollout.data_path,
        recipe=ONE_GPU_RECIPE.name, overlay=ONE_GPU_OVERLAY, overrides=tuple(overrides),
    )  # fmt: skip


def check_device(device: str) -> None:
    """Stop (SystemExit) with what this machine lacks when `device` is cuda and torch sees no GPU."""
    if device != "cuda":
        return
    import torch

    if torch.cuda.is_available():
        return
    from common.device.backend import cuda_missing

    raise SystemExit(
        f"error: --device cuda: {cuda_missing()}. Nothing was run; on this machine use --device cpu "
        "(--workload one_gpu --scale toy rehearses the GPU run)"
    )


def workload(name: str, scale: str = "full", device: str = "cpu") -> Workload:
    """The workload `name` ("bench" | "one_gpu") at `scale` on `device`; ValueError for a
    combination there is none of (the BENCH CONFIG is CPU-only and has one size)."""
    if name not in WORKLOADS or scale not in SCALES or device not in DEVICES:
        raise ValueError(f"workload {name!r} at scale {scale!r} on {device!r}: use {WORKLOADS}, {SCALES}, {DEVICES}")
    if name == "bench":
        if (scale, device) != ("full", "cpu"):
            raise ValueError(
                f"the BENCH CONFIG runs on CPU at its one size (got scale {scale}, device {device}); "
                "for a GPU or the toy size use the one_gpu workload"
            )
        return bench_workload()
    return one_gpu_workload(scale, device)


# ------------------------------------------------------------------------ FLOPs of one iteration


def trunk_flops(tokens: int, context: int, arch: dict = ARCH) -> float:
    """Forward FLOPs of the transformer layers of `arch` for `tokens` tokens attending to `context`
    keys each (matmuls only: QKV, output projection, SwiGLU MLP, scores and weighted values)."""
    h, f, L = arch["hidden_size"], arch["ffn_hidden_size"], arch["num_layers"]
    kv = h * arch["num_query_groups"] // arch["num_attention_heads"]
    per_token = 2 * (h * (h + 2 * kv) + h * h + 3 * h * f) + 4 * context * h
    return L * tokens * per_token


def head_flops(positions: int, arch: dict = ARCH) -> float:
    """Forward FLOPs of the output layer of `arch` at `positions` positions."""
    return 2 * positions * arch["hidden_size"] * arch["vocab_size"]


def phase_flops(prompt_lens: list[int], response_lens: list[int], arch: dict = ARCH) -> dict[str, float]:
    """Model FLOPs each phase of an iteration needs, the same count for both sides: the trunk over
    every token, the output layer only where a token is sampled or a log-prob is needed (work a side
    spends beyond that lowers its GFLOP/s). `prompt_lens`/`response_lens`: one per sequence."""
    gen = ref = rew = 0.0
    for p, r in zip(prompt_lens, response_lens):
        t = p + r
        gen += trunk_flops(p, p / 2, arch) + trunk_flops(r, p + r / 2, arch) + head_flops(r, arch)
        ref += trunk_flops(t, t / 2, arch) + head_flops(r, arch)
        rew += trunk_flops(t, t / 2, arch)
    return {"generate": gen, "reference": ref, "reward": rew, "train": 3 * ref}  # backward ~ 2x forward
