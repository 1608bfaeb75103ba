"""Is training still sane? Two checks on what every iteration's update returned.

- Non-finite: a NaN/inf policy log-prob (hence loss) or gradient norm stops the run before the
  iteration's checkpoint is written, so the last checkpoint on disk is the last good state. Megatron
  only reports overflow for fp16 (a skipped step); fp32 and bf16 apply NaN updates silently, so the
  values are checked here for every dtype. ``actor_rollout_ref.actor_rollout.lr=1e30`` reliably
  trips it at iteration 2 of ``tiny`` (the first update blows the weights up). In fp16 a skipped
  step is loss scaling at work (the scale is lowered and the next step tries again); only an
  iteration whose every step overflowed at the smallest scale stops the run (`check_loss_scale`).
- Collapse: the gradient norm exactly 0, or the policy's per-token entropy at its ceiling ln(vocab)
  (a uniform policy), for ``COLLAPSE_ITERS`` iterations in a row. Training goes on (the run may
  recover), with a warning printed and written to ``warnings.jsonl``. ``lr=1e6`` on ``tiny``:
  grad norm 0 and log-prob -ln(128256) = -11.76 per token from iteration 2. A random-init policy is
  close to uniform too, but ~0.01 nats per token below the ceiling; the tolerance is 10x tighter.
"""

from __future__ import annotations

import math

COLLAPSE_ITERS = 3
UNIFORM_TOLERANCE = 1e-3  # nats per token below ln(vocab) that still count as uniform


class NonFiniteError(RuntimeError):
    """The update of an iteration produced NaN/inf: the weights in memory are no longer usable."""


def check_finite(policy_logps: list[float], grad_norms: list[float]) -> None:
    bad_logps = sum(not math.isfinite(x) for x in policy_logps)
    bad_grads = [g for g in grad_norms if not math.isfinite(g)]
    if bad_logps or bad_grads:
        what = []
        if bad_logps:
            what.append(f"{bad_logps} of {len(policy_logps)} policy log-probs (so the loss)")
        if bad_grads:
            what.append(f"the gradient norm ({bad_grads[0]}) in {len(bad_grads)} of {len(grad_norms)} optimizer steps")
        raise NonFiniteError(" and ".join(what) + " not finite")


MIN_LOSS_SCALE = 1.0  # fp16's smallest loss scale (common/train/optimizer.py gives it to Megatron's optimizer)


def check_loss_scale(skipped: int, steps: int, scale: float | None) -> None:
    """fp16: stop when every optimizer step of the iteration overflowed although the loss scale is
    already at its minimum (Megatron would skip every step from here on)."""
    if scale is not None and steps and skipped == steps and scale <= MIN_LOSS_SCALE:
        raise NonFiniteError(
            f"fp16 gradients overflowed in all {steps} optimizer steps of the iteration at loss scale {scale:g}, "
            "the smallest; train in bf16 (training.dtype=bf16)"
        )


class CollapseWatch:
    """Counts consecutive collapsed iterations; ``update`` returns a warning when the count reaches
    ``COLLAPSE_ITERS`` (once per collapsed stretch)."""

    def __init__(self, vocab_size: int):
        self.ceiling = math.log(vocab_size)
        self.streak = 0

    def update(self, step: int, grad_norm: float, entropy_per_token: float) -> str | None:
        signs = []
        if grad_norm == 0:
            signs.append("gradient norm exactly 0")
        if entropy_per_token >= self.ceiling - UNIFORM_TOLERANCE:
            signs.append(f"entropy {entropy_per_token:.4f} nats/token = ln(vocab), a uniform policy")
        self.streak = self.streak + 1 if signs else 0
        if self.streak != COLLAPSE_ITERS:
            return None
        return (
            f"iteration {step}: the policy looks collapsed ({'; '.join(signs)}) for {COLLAPSE_ITERS} iterations "
            "in a row; it is no longer learning: lower actor_rollout_ref.actor_rollout.lr or set clip_grad"
        )
