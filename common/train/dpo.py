"""The DPO objective and its metrics, as pure functions of per-pair summed log-probabilities.

Log-probabilities are summed over response tokens only (the response mask excludes prompt and
padding), so nothing here can count padding. Metric names and meanings follow TRL's
``OnlineDPOTrainer`` (see the project's interface spec).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_losses(
    policy_chosen_B: torch.Tensor,
    policy_rejected_B: torch.Tensor,
    ref_chosen_B: torch.Tensor,
    ref_rejected_B: torch.Tensor,
    *,
    beta: float,
    loss_type: str,
) -> torch.Tensor:
    """Per-pair loss. ``logits = (pi_c - pi_r) - (ref_c - ref_r)``."""
    logits_B = (policy_chosen_B - policy_rejected_B) - (ref_chosen_B - ref_rejected_B)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * logits_B)
    if loss_type == "ipo":
        return (logits_B - 1.0 / (2.0 * beta)) ** 2
    raise ValueError(f"algorithm.loss_type={loss_type!r}: not one of sigmoid, ipo")


def dpo_metrics(
    *,
    policy_chosen_B: torch.Tensor,
    policy_rejected_B: torch.Tensor,
    ref_chosen_B: torch.Tensor,
    ref_rejected_B: torch.Tensor,
    scores_chosen_B: torch.Tensor,
    scores_rejected_B: torch.Tensor,
    scores_PN: torch.Tensor,
    has_eos_PN: torch.Tensor,
    beta: float,
    loss_type: str,
) -> dict[str, float]:
    """All per-iteration metrics from the per-pair values of the whole global batch.

    ``objective/kl`` and ``objective/entropy`` average over the chosen and rejected sequences
    (sum over response tokens only, unlike TRL which also sums padding); ``objective/scores`` and
    ``val/contain_eos_token`` over every sampled response (``[prompts, samples]``).
    """
    loss_B = dpo_losses(
        policy_chosen_B, policy_rejected_B, ref_chosen_B, ref_rejected_B, beta=beta, loss_type=loss_type
    )
    rewards_chosen_B = beta * (policy_chosen_B - ref_chosen_B)
    rewards_rejected_B = beta * (policy_rejected_B - ref_rejected_B)
    margins_B = rewards_chosen_B - rewards_rejected_B
    policy_S = torch.cat([policy_chosen_B, policy_rejected_B])
    ref_S = torch.cat([ref_chosen_B, ref_rejected_B])
    kl = (policy_S - ref_S).mean()
    return {
        "loss": loss_B.mean().item(),
        "beta": float(beta),
        "logps/chosen": policy_chosen_B.mean().item(),
        "logps/rejected": policy_rejected_B.mean().item(),
        "rewards/chosen": rewards_chosen_B.mean().item(),
        "rewards/rejected": rewards_rejected_B.mean().item(),
        "rewards/margins": margins_B.mean().item(),
        "rewards/accuracies": (margins_B > 0).float().mean().item(),
        "objective/kl": kl.item(),
        "objective/entropy": (-policy_S).mean().item(),
        "objective/non_score_reward": (-beta * kl).item(),
        "objective/scores": scores_PN.mean().item(),
        "objective/scores_margin": (scores_chosen_B - scores_rejected_B).mean().item(),
        "objective/rlhf_reward": (scores_PN.mean() - beta * kl).item(),
        "val/contain_eos_token": has_eos_PN.float().mean().item(),
    }


def microbatch_dpo_loss(*, beta: float, loss_type: str):
    """The actor's loss for ``common.train.schedule.run_microbatches``: a micro-batch of k pairs is 2k
    sequences (k chosen, then k rejected) with the reference's summed log-probs in
    ``batch.aux["ref"]``; returns (mean loss over the micro-batch, the policy's summed log-probs).
    The schedule averages micro-batches, Megatron DDP the data-parallel ranks."""
    from common.train.sequences import summed_response_logps

    def loss_fn(batch, logps_BT1: torch.Tensor):
        logps_S = summed_response_logps(logps_BT1, batch)
        k = logps_S.shape[0] // 2
        ref_S = batch.aux["ref"]
        losses_B = dpo_losses(logps_S[:k], logps_S[k:], ref_S[:k], ref_S[k:], beta=beta, loss_type=loss_type)
        return losses_B.mean(), {"chosen": logps_S[:k].detach(), "rejected": logps_S[k:].detach()}

    return loss_fn


def pair_items(chosen: list, rejected: list, ref_chosen: list[float], ref_rejected: list[float]) -> list[dict]:
    """The pairs as the actor's ``train`` takes them (plain values, sent through Ray): one dict per pair
    of ``Sequence`` s with the reference's summed log-prob of each member."""
    return [
        {
            "prompt_ids": c.prompt_ids,
            "chosen_ids": c.response_ids,
            "rejected_ids": r.response_ids,
            "ref_chosen": rc,
            "ref_rejected": rr,
        }
        for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected)
    ]


def pair_sequences(pairs: list[dict], micro_batch_size: int):
    """The actor's sequence layout for ``microbatch_dpo_loss``: per micro-batch of
    ``micro_batch_size`` pairs, the chosen sequences then the rejected ones -> (sequences, the
    reference's summed log-prob of each). A pair: ``prompt_ids, chosen_ids, rejected_ids,
    ref_chosen, ref_rejected``."""
    from common.train.sequences import Sequence

    seqs, refs = [], []
    for start in range(0, len(pairs), micro_batch_size):
        micro = pairs[start : start + micro_batch_size]
        seqs += [Sequence(p["prompt_ids"], p["chosen_ids"]) for p in micro]
        seqs += [Sequence(p["prompt_ids"], p["rejected_ids"]) for p in micro]
        refs += [p["ref_chosen"] for p in micro] + [p["ref_rejected"] for p in micro]
    return seqs, refs
