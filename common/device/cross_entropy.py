"""Megatron-core's vocab-parallel cross entropy, computed in blocks of rows that stay in cache (CPU).

`megatron.core.tensor_parallel.vocab_parallel_cross_entropy` makes five passes over the whole
[tokens, vocabulary] logits tensor in the forward (max, subtract, exp, sum, divide) and one in the
backward: for the 1,024 response positions of a BENCH CONFIG batch (128k vocabulary) each pass
reads and writes 525 MB from memory, ~0.2 s of a training step on a 2-core CPU, most of it waiting
on memory (its max also computes the argmax it throws away). `blocked_vocab_parallel_cross_entropy`
does the same arithmetic on the same values in the same order, one block of `ROWS` rows at a time,
so each block is read from memory once and the other passes find it in cache; the softmax
division happens only where a backward will need it (in the forward's block loop with TP 1, per
block in the backward after the sums' all-reduce with TP > 1; a forward-only pass, such as the
reference's log-probs, skips it). Loss and gradient are bit-identical to Megatron's
(tests/test_cross_entropy.py), with tensor parallelism as well (the same three all-reduces: max,
target logit, sum of exponentials). Installed for Megatron's models on CPU by
common/device/megatron_cpu_patches.py; accelerators keep Megatron's own (or its fused) cross entropy.
"""

from __future__ import annotations

import torch
from megatron.core.parallel_state import (
    get_tensor_model_parallel_group,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
)
from megatron.core.tensor_parallel.utils import VocabUtility

ROWS = 8  # rows per block: 8 x 128k fp32 = 4 MB, within the last-level cache of the CPUs tested


def _blocks(n: int):
    return [slice(start, min(start + ROWS, n)) for start in range(0, n, ROWS)]


class _BlockedVocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vocab_parallel_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Megatron works in place on the float logits (the output layer's result, used once).
        logits = vocab_parallel_logits.float()
        V = logits.shape[-1]
        logits_NV = logits.view(-1, V)
        N = logits_NV.shape[0]
        group, tp = get_tensor_model_parallel_group(), get_tensor_model_parallel_world_size()
        start, end = VocabUtility.vocab_range_from_per_partition_vocab_size(V, get_tensor_model_parallel_rank(), tp)
        target_N = target.reshape(-1)
        outside_N = (target_N < start) | (target_N >= end)
        local_N = (target_N - start).masked_fill_(outside_N, 0)

        max_N, sum_N = logits_NV.new_empty(N), logits_NV.new_empty(N)
        predicted_N = logits_NV.new_empty(N)
        if tp > 1:  # the maximum over every rank's part first: one pass, then an all-reduce
            for rows in _blocks(N):
                torch.amax(logits_NV[rows], dim=-1, out=max_N[rows])
            torch.distributed.all_reduce(max_N, op=torch.distributed.ReduceOp.MAX, group=group)
        # With TP 1 a block's sum is final at once: for a backward, the softmax is then taken
        # while the block is still in cache (with TP > 1 after the sums' all-reduce, in backward).
        ctx.normalized = tp == 1 and ctx.needs_input_grad[0]
        for rows in _blocks(N):
            x_RV = logits_NV[rows]
            if tp == 1:
                torch.amax(x_RV, dim=-1, out=max_N[rows])
            x_RV.sub_(max_N[rows, None])
            predicted_N[rows] = x_RV.gather(1, local_N[rows, None])[:, 0]
            torch.exp(x_RV, out=x_RV)
            torch.sum(x_RV, dim=-1, out=sum_N[rows])
            if ctx.normalized:
                x_RV.div_(sum_N[rows, None])
        predicted_N.masked_fill_(outside_N, 0.0)
        if tp > 1:
            torch.distributed.all_reduce(predicted_N, op=torch.distributed.ReduceOp.SUM, group=group)
            torch.distributed.all_reduce(sum_N, op=torch.distributed.ReduceOp.SUM, group=group)
        loss_N = torch.log(sum_N) - predicted_N
        ctx.save_for_backward(logits, sum_N, outside_N, local_N)  # now exp(x - max) (/ sum)
        return loss_N.view_as(target)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        # Megatron's order: softmax = exp / sum; minus 1 at the target; times the incoming gradient
        # (the division per block, in cache, where the forward could not do it).
        exp, sum_N, outside_N, local_N = ctx.saved_tensors
        exp_NV = exp.view(-1, exp.shape[-1])
        grad_N, update_N = grad_loss.reshape(-1), 1.0 - outside_N.float()
        arange_N = torch.arange(exp_NV.shape[0], device=exp_NV.device)
        if ctx.normalized:
            exp_NV[arange_N, local_N] -= update_N
            exp_NV.mul_(grad_N[:, None])
            return exp, None
        for rows in _blocks(exp_NV.shape[0]):
            g_RV = exp_NV[rows]
            g_RV.div_(sum_N[rows, None])
            g_RV[arange_N[: g_RV.shape[0]], local_N[rows]] -= update_N[rows]
            g_RV.mul_(grad_N[rows, None])
        return exp, None


def blocked_vocab_parallel_cross_entropy(vocab_parallel_logits, target, label_smoothing: float = 0.0):
    """Drop-in for `megatron.core.tensor_parallel.vocab_parallel_cross_entropy` (logits
    [sequence, batch, vocabulary / TP], target [sequence, batch] -> loss [sequence, batch]);
    label smoothing is not offered (this project never smooths): a nonzero value is refused."""
    if label_smoothing:
        raise ValueError(
            f"blocked_vocab_parallel_cross_entropy: label_smoothing={label_smoothing} is not supported; "
            "use megatron.core.tensor_parallel.vocab_parallel_cross_entropy"
        )
    return _BlockedVocabParallelCrossEntropy.apply(vocab_parallel_logits, target)
