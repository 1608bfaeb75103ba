"""Reward-based pair selection with explicit prompt and sample indices.

The original system generated responses interleaved per prompt but indexed chosen/rejected as if
they were in TRL's block layout, so whenever sample b won, pairs mixed prompts. Here a rollout is a
``[num_prompts, n_samples]`` grid: row = prompt, column = sample. Selection returns, per prompt, the
column of the chosen and of the rejected response; nothing depends on how a batch is flattened.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Pairs:
    chosen_P: torch.Tensor  # [P] sample index of the chosen response of each prompt
    rejected_P: torch.Tensor  # [P] sample index of the rejected response


def apply_missing_eos_penalty(scores_PN: torch.Tensor, has_eos_PN: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """Subtract ``penalty`` from the score of every response that never emitted EOS."""
    if penalty is None:
        return scores_PN.clone()
    return scores_PN - penalty * (~has_eos_PN).to(scores_PN.dtype)


def select_pairs(scores_PN: torch.Tensor) -> Pairs:
    """Best vs worst response per prompt; ties go to the first sample.

    With two samples this is TRL's rule (``first >= second`` -> first is chosen). With more, the
    chosen is the first maximum and the rejected the last minimum, so a prompt whose samples all
    tie still gets two distinct indices (0 chosen, n-1 rejected).
    """
    if scores_PN.dim() != 2 or scores_PN.shape[1] < 2:
        raise ValueError(f"scores: expected [prompts, samples>=2], got shape {tuple(scores_PN.shape)}")
    n = scores_PN.shape[1]
    # argmax/argmin return the first extreme; flip to get the last minimum.
    chosen_P = torch.argmax(scores_PN, dim=1)
    rejected_P = (n - 1) - torch.argmin(scores_PN.flip(1), dim=1)
    same = chosen_P == rejected_P  # only when all samples tie
    rejected_P = torch.where(same, torch.full_like(rejected_P, n - 1), rejected_P)
    chosen_P = torch.where(same, torch.zeros_like(chosen_P), chosen_P)
    return Pairs(chosen_P=chosen_P, rejected_P=rejected_P)
