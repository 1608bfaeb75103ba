"""-log p(target) at picked positions of a Megatron GPT model: the output layer sees only the hidden
states of those positions, and without gradients it never makes a full-vocabulary logits tensor.

With gradients (the actor's update) the picked rows go through Megatron's output layer and its
vocab-parallel cross entropy (GPTModel's ``labels=`` path). Three matmuls (forward, and the input
and weight gradients) are most of that work and the logits are needed for the backward anyway;
recomputing them chunk by chunk in the backward measured slower on CPU.

Without gradients (the reference's log-probs) the logits are only needed for their log-sum-exp and
the target's logit, so they are computed one vocabulary chunk at a time: a [N, 2048] fp32 block
(8 MB) stays in cache while it is reduced, where Megatron's cross entropy makes five passes over a
[N, V] tensor (0.5 GB for 1024 response tokens of a 128k vocabulary: max, subtract, exp, sum,
divide). Same arithmetic (log-sum-exp minus the target logit), summed in another order: the two
agree to fp32 rounding (tests/test_response_logprobs.py). With TP > 1 each rank reduces its
vocabulary shard and the shards' log-sum-exps and target logits are combined across the TP group,
as Megatron's cross entropy does; padded vocabulary rows (Megatron pads to 128 x TP) are left out,
as the padded-id mask of common/model.py gives them zero probability.
"""

from __future__ import annotations

import contextlib

import torch
from megatron.core import parallel_state

CHUNK = 2048  # vocabulary rows per chunk (measured on CPU: 2048 reduces in cache, 8192 does not)


@torch.no_grad()
def chunked_target_nll(hidden_NH: torch.Tensor, weight_VH: torch.Tensor, targets_N: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """-log softmax(hidden @ weight^T)[target] [N] fp32 over the real vocabulary, one chunk of
    vocabulary rows at a time. ``weight_VH``: this TP rank's vocabulary shard (padded rows
    included); ``vocab_size``: the number of real ids."""
    local_rows = weight_VH.shape[0]
    start = parallel_state.get_tensor_model_parallel_rank() * local_rows
    real_rows = max(0, min(local_rows, vocab_size - start))
    N = hidden_NH.shape[0]
    local_N = targets_N - start
    target_logit_N = torch.zeros(N, dtype=torch.float32, device=hidden_NH.device)
    lse_NK = torch.full((N, max(1, -(-real_rows // CHUNK))), float("-inf"), dtype=torch.float32, device=hidden_NH.device)
    for k, c0 in enumerate(range(0, real_rows, CHUNK)):
        c1 = min(c0 + CHUNK, real_rows)
        logits_NC = (hidden_NH @ weight_VH[c0:c1].t()).float()
        torch.logsumexp(logits_NC, dim=1, out=lse_NK[:, k])
        rows = ((local_N >= c0) & (local_N < c1)).nonzero(as_tuple=True)[0]
        target_logit_N[rows] = logits_NC[rows, local_N[rows] - c0]
    lse_N = torch.logsumexp(lse_NK, dim=1)
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        group = parallel_state.get_tensor_model_parallel_group()
        max_N = lse_N.clone()
        torch.distributed.all_reduce(max_N, op=torch.distributed.ReduceOp.MAX, group=group)
        sum_N = (lse_N - max_N).exp()
        torch.distributed.all_reduce(sum_N, group=group)
        torch.distributed.all_reduce(target_logit_N, group=group)
        lse_N = max_N + sum_N.log()
    return lse_N - target_logit_N


@contextlib.contextmanager
def _output_layer_override(gpt, forward):
    """Instance-level override of GPTModel's output layer forward (a no-op on pipeline stages
    without it): its weights and their names are untouched, its forward hooks still run, and the
    class's forward is back on exit."""
    layer = getattr(gpt, "output_layer", None) if gpt.post_process else None
    if layer is None:
        yield
        return
    layer.forward = forward(layer)
    try:
        yield
    finally:
        del layer.forward


def picked_nll(model, gpt, ids_BT, position_ids_BT, mask, rows_N: torch.Tensor, labels_1N: torch.Tensor):
    """``model(ids, positions, mask)`` with the output layer on hidden rows ``rows_N``
    of its [T, B, H] input only (row-major t * B + b) -> -log p(labels) [1, N] on the last pipeline
    stage (the hidden states to send on, elsewhere). ``gpt``: the GPTModel inside ``model``."""
    if torch.is_grad_enabled():

        def picked_rows(layer):
            cls_forward = type(layer).forward

            def forward(hidden_TBH, *args, **kwargs):
                T, B, H = hidden_TBH.shape
                return cls_forward(layer, hidden_TBH.reshape(T * B, H).index_select(0, rows_N)[:, None, :], *args, **kwargs)

            return forward

        with _output_layer_override(gpt, picked_rows):
            return model(ids_BT, position_ids_BT, mask, labels=labels_1N)  # Megatron's cross entropy

    def chunked(layer):
        def forward(hidden_TBH, weight=None, runtime_gather_output=None):
            T, B, H = hidden_TBH.shape
            picked_NH = hidden_TBH.reshape(T * B, H).index_select(0, rows_N)
            nll_N = chunked_target_nll(picked_NH, layer.weight if weight is None else weight, labels_1N[0], gpt.real_vocab_size)
            # as [T=N, B=1, 1] (GPTModel returns it as [1, N, 1]); the padded-id mask hook of
            # common/model.py sees a width-1 output and leaves it alone (padded ids are left out above)
            return nll_N[:, None, None], None

        return forward

    with _output_layer_override(gpt, chunked):
        out = model(ids_BT, position_ids_BT, mask)
    return out[..., 0] if gpt.post_process else out
