"""Per-token log-probabilities of given sequences under a Megatron GPT model.

The model computes them with Megatron's vocab-parallel cross entropy (GPTModel's `labels=` path),
so with TP > 1 the full-vocabulary logits are never gathered on one rank.

Only the positions whose log-prob is needed go through the output layer: the hidden states of
those positions are picked out before the output layer (`output_rows`). On the BENCH CONFIG
(128,256 vocabulary, 16 sequences of up to ~420 tokens of which 64 are the response) the output
layer over every position made a [T, B, V] fp32 tensor of up to 3.5 GB per pass, and the cross
entropy several more passes over it; over the response positions only it is 1024 x V (0.5 GB),
and the forward + backward of the reference and the policy do 6.5x less output-layer work on the
longest prompts. Prompt positions never have their logits computed at all.
"""

from __future__ import annotations

import contextlib

import torch

from common.model import parallel


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


def selected_targets(input_ids_BT: torch.Tensor, select_BT1: torch.Tensor):
    """(rows_N, labels_1N) for the positions t with select_BT1[b, t] (log p of token t+1), in
    row-major (b, t) order: rows_N indexes Megatron's [T*B] flattened hidden states (t*B + b);
    labels_1N are the targets shaped as GPTModel's `labels` [batch 1, sequence N]."""
    B = input_ids_BT.shape[0]
    b_N, t_N = select_BT1.nonzero(as_tuple=True)
    return t_N * B + b_N, input_ids_BT[b_N, t_N + 1][None, :]


def scatter_logps(logps_N: torch.Tensor, select_BT1: torch.Tensor) -> torch.Tensor:
    """[B, T-1] log-probs: `logps_N` (row-major order of select_BT1) at the selected positions,
    0 elsewhere, so sums over masked positions equal those over the full computation exactly."""
    return torch.zeros(select_BT1.shape, dtype=logps_N.dtype, device=logps_N.device).masked_scatter(select_BT1, logps_N)


@contextlib.contextmanager
def output_rows(gpt, rows_N: torch.Tensor):
    """While active, GPTModel's output layer sees only hidden rows `rows_N` of its [T, B, H] input,
    as a [N, 1, H] batch (so `labels` must be [1, N]). A no-op on pipeline stages without the output
    layer. Instance-level override: the layer's forward hooks (padded-vocabulary masking) still run,
    its weights and their names are untouched; the class's forward is back on exit."""
    layer = getattr(gpt, "output_layer", None) if gpt.post_process else None
    if layer is None:
        yield
        return
    forward = layer.forward

    def picked_forward(hidden_TBH, *args, **kwargs):
        T, B, H = hidden_TBH.shape
        return forward(hidden_TBH.reshape(T * B, H).index_select(0, rows_N)[:, None, :], *args, **kwargs)

    layer.forward = picked_forward
    try:
        yield
    finally:
        del layer.forward


def token_logprobs(
    model, input_ids_BT: torch.Tensor, valid_BT: torch.Tensor, select_BT1: torch.Tensor | None = None
) -> torch.Tensor:
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) -> [B, T-1], fp32, no temperature.

    Rows are right-padded; `valid_BT` False marks padding, which valid positions never attend to.
    Entries whose target is padding are meaningless (mask them with valid_BT[:, 1:]).
    `select_BT1`: compute only these positions (the output layer runs on them alone); the others
    are 0. Differentiable when grad is enabled. Computes only up to the longest valid row.
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
    if select_BT1 is None:
        nll_BL = model(ids_BL, position_ids_BL, mask, labels=labels_BL)
        logps_BL1 = -nll_BL[:, :-1].float()
    else:
        if select_BT1[:, length - 1 :].any():
            raise ValueError("token_logprobs: select_BT1 selects positions whose target is padding")
        select_BL1 = select_BT1[:, : length - 1]
        rows_N, labels_1N = selected_targets(ids_BL, select_BL1)
        with output_rows(model, rows_N):
            nll_1N = model(ids_BL, position_ids_BL, mask, labels=labels_1N)
        logps_BL1 = scatter_logps(-nll_1N[0].float(), select_BL1)
    if length == T:
        return logps_BL1
    return torch.nn.functional.pad(logps_BL1, (0, T - length))
