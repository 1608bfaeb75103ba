"""The actor's training wrapper: Megatron DDP, Megatron's (mixed-precision) Adam and its LR schedule.

One function used by the Ray actor (`common.cluster.workers.ActorWorker`) and by the single-process device
check (`bench/device_check.py`), so the check exercises exactly the optimizer a run trains with.
Plain arguments, no config object: the device check runs where omegaconf is not installed.

bf16/fp16 models get Megatron's `Float16OptimizerWithFloat16Params`: fp32 main parameters, fp32
gradients (`grad_reduce_in_fp32`), fp32 Adam moments, bf16 weights refreshed after every step.
fp16 adds Megatron's dynamic loss scaling, wired as Megatron's own training wires it: the schedules
multiply the loss by the optimizer's scale (`grad_scale_func`), the optimizer unscales the gradients
and skips the step when they overflow, halving the scale (after `hysteresis` overflows) and doubling
it after `loss_scale_window` clean steps. It starts at 2^16 (`INITIAL_LOSS_SCALE`), not Megatron's
2^32: every step it skips on the way down is a whole rollout's update lost.
Without Transformer Engine or Apex, megatron-core 0.16.1 falls back to `torch.optim.AdamW`
(decoupled weight decay), switched to torch's fused Adam kernel on CPU and CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.train.health import MIN_LOSS_SCALE

INITIAL_LOSS_SCALE = 2.0**16  # fp16 only (see the module docstring)


@dataclass(frozen=True)
class AdamSettings:
    """The actor section's optimizer keys (names as in the config)."""

    lr: float
    min_lr: float
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    adam_eps: float
    clip_grad: float
    lr_warmup_fraction: float
    lr_decay_style: str


def build_actor_optimizer(policy, settings: AdamSettings, *, dtype: torch.dtype, total_steps: int):
    """(ddp_model, optimizer, scheduler) for ``policy`` (built, on its device, model-parallel state
    initialised). ``total_steps``: optimizer steps of the whole run (the LR schedule's length)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    s = settings
    model = DistributedDataParallel(
        config=policy.config,
        ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False),
        module=policy,
    )
    # the schedules call this after the last backward: DP all-reduce, tied-embedding grads (PP)
    policy.config.finalize_model_grads_func = finalize_model_grads
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=s.lr,
            min_lr=s.min_lr,
            weight_decay=s.weight_decay,
            adam_beta1=s.adam_beta1,
            adam_beta2=s.adam_beta2,
            adam_eps=s.adam_eps,
            clip_grad=s.clip_grad,
            bf16=dtype == torch.bfloat16,
            fp16=dtype == torch.float16,
            initial_loss_scale=INITIAL_LOSS_SCALE,
            min_loss_scale=MIN_LOSS_SCALE,
            params_dtype=dtype,
        ),
        [model],
    )
    if dtype == torch.float16:  # the schedules scale the loss by the optimizer's dynamic scale
        policy.config.grad_scale_func = optimizer.scale_loss
    _use_fused_adam(optimizer)
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if s.lr_warmup_fraction > 0 else s.lr,
        max_lr=s.lr,
        min_lr=s.min_lr,
        lr_warmup_steps=int(s.lr_warmup_fraction * total_steps),
        lr_decay_steps=total_steps,
        lr_decay_style=s.lr_decay_style,
        start_wd=s.weight_decay,
        end_wd=s.weight_decay,
        wd_incr_steps=total_steps,
        wd_incr_style="constant",
    )
    return model, optimizer, scheduler


def _use_fused_adam(optimizer) -> None:
    """Switch Megatron's torch Adam(W) to torch's fused kernel on CPU and CUDA: one pass over each
    parameter, its gradient and both moments instead of ~8 elementwise passes. The same update up
    to fp32 rounding (tests/test_optimizer.py); on the BENCH CONFIG's 70M parameters the CPU step
    went from ~0.36 s to ~0.06 s. Other devices keep torch's default."""
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        adam = getattr(chained, "optimizer", None)
        if not isinstance(adam, torch.optim.Adam | torch.optim.AdamW):
            continue
        for group in adam.param_groups:
            if all(p.device.type in ("cpu", "cuda") for p in group["params"]):
                group["fused"], group["foreach"] = True, False


def train_step(model, optimizer, scheduler, batches, loss_fn) -> tuple[float | None, list[dict]]:
    """One optimizer step over ``batches`` (the micro-batches of one mini-batch, forward + backward
    through Megatron's schedule) -> (grad norm, each micro-batch's values from ``loss_fn``).

    The grad norm is None when the optimizer skipped the step: fp16 gradients overflowed at the
    current loss scale, which the optimizer has lowered (``loss_scale``); the weights are unchanged.
    Only fp16 skips: fp32 and bf16 report NaN/inf as the norm (common/train/health.py stops the run)."""
    from common.train.schedule import run_microbatches

    model.zero_grad_buffer()
    optimizer.zero_grad()
    stats = run_microbatches(model, batches, loss_fn, forward_only=False)
    ok, grad_norm, _ = optimizer.step()
    scheduler.step(increment=1)  # as Megatron's training does, skipped step or not
    if not ok:
        return None, stats
    return (float(grad_norm) if grad_norm is not None else float("nan")), stats


def loss_scale(optimizer) -> float:
    """The optimizer's current loss scale (1.0 without loss scaling: fp32, bf16)."""
    return float(optimizer.get_loss_scale())
