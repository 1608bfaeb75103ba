"""Per-token log-probabilities of given sequences under a Megatron GPT model.

The model computes them with Megatron's vocab-parallel cross entropy (GPTModel's `labels=` path),
so with TP > 1 the full-vocabulary logits are never gathered on one rank.
"""

from __future__ import annotations

import torch

from common import parallel


def causal_padding_mask(valid_BT: torch.Tensor) -> torch.Tensor:
    """Megatron attention mask [B, 1, T, T] (True = masked): causal, plus padded keys."""
    T = valid_BT.shape[1]
    causal_TT = torch.ones(T, T, dtype=torch.bool, device=valid_BT.device).triu_(1)
    return causal_TT[None, None] | ~valid_BT[:, None, None, :]


def logprob_inputs(input_ids_BT: torch.Tensor, valid_BT: torch.Tensor):
    """(position_ids_BT, attention_mask, labels_BT) for `model(ids, pos, mask, labels=labels)`,
    which returns -log p(labels) [B, T]; labels_BT[:, t] = input_ids_BT[:, t+1] (last column is a
    dummy). For callers that drive the model through Megatron's pipeline schedules."""
    B, T = input_ids_BT.shape
    position_ids_BT = torch.arange(T, device=input_ids_BT.device).expand(B, T)
    labels_BT = torch.roll(input_ids_BT, shifts=-1, dims=1)
    return position_ids_BT, causal_padding_mask(valid_BT), labels_BT


def token_logprobs(model, input_ids_BT: torch.Tensor, valid_BT: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) -> [B, T-1], fp32, no temperature.

    Rows are right-padded; `valid_BT` False marks padding, which valid positions never attend to.
    Entries whose target is padding are meaningless (mask them with valid_BT[:, 1:]).
    Differentiable when grad is enabled. Computes only up to the longest valid row.
    """
    if parallel.pipeline_parallel_size() > 1:
        raise NotImplementedError(
            "token_logprobs: pipeline parallelism runs through Megatron's schedules; use "
            "logprob_inputs() inside a forward_step_func instead"
        )
    if input_ids_BT.shape != valid_BT.shape:
        raise ValueError(
            f"token_logprobs: input_ids {tuple(input_ids_BT.shape)} and valid "
            f"{tuple(valid_BT.shape)} differ in shape; pass one valid flag per token"
        )
    B, T = input_ids_BT.shape
    length = min(T, max(int(valid_BT.sum(dim=1).max()), 2))  # cost follows the real length
    ids_BL, valid_BL = input_ids_BT[:, :length], valid_BT[:, :length]
    position_ids_BL, mask, labels_BL = logprob_inputs(ids_BL, valid_BL)
    nll_BL = model(ids_BL, position_ids_BL, mask, labels=labels_BL)
    logps_BL1 = -nll_BL[:, :-1].float()
    if length == T:
        return logps_BL1
    return torch.nn.functional.pad(logps_BL1, (0, T - length))
