"""Micro-batches through Megatron's forward/backward schedules (any TP, any PP).

One entry point for the three roles: training (actor, forward + backward), reference log-probs
and reward scores (forward only). With PP > 1 the stages exchange fixed-shape activations, so the
micro-batches of one call are padded to a common length; with PP = 1 each keeps its own length
(no compute on padding beyond its longest row).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from megatron.core.enums import ModelType
from megatron.core.pipeline_parallel import get_forward_backward_func

from common.model import parallel
from common.train.logprobs import output_rows, scatter_logps, selected_targets
from common.train.sequences import PaddedBatch

# loss_fn(batch, output) -> (loss scalar, dict of detached values); output is the last stage's
LossFn = Callable[[PaddedBatch, torch.Tensor], tuple[torch.Tensor, dict]]


def pad_to(batch: PaddedBatch, T: int) -> PaddedBatch:
    extra = T - batch.ids_BT.shape[1]
    if extra == 0:
        return batch
    pad = torch.nn.functional.pad
    return PaddedBatch(
        pad(batch.ids_BT, (0, extra)),
        pad(batch.valid_BT, (0, extra)),
        pad(batch.response_BT1, (0, extra)),
        batch.prompt_len_B,
        batch.total_len_B,
        batch.aux,
    )


def run_microbatches(
    model, batches: list[PaddedBatch], loss_fn: LossFn, *, forward_only: bool, output: str = "logps"
) -> list[dict]:
    """Run ``batches`` as the micro-batches of one step; returns each micro-batch's dict (last
    pipeline stage only; other stages get ``[]``).

    ``output="logps"``: the model is a policy and ``loss_fn`` gets per-token log-probs ``[B, T-1]``,
    computed at the response positions only (``batch.response_BT1``; 0 elsewhere) with Megatron's
    vocab-parallel cross entropy: no logits for prompt positions, none gathered across TP ranks.
    ``output="scores"``: a reward model, ``loss_fn`` gets per-position scores ``[B, T]``.
    """
    if parallel.pipeline_parallel_size() > 1:
        T = max(b.ids_BT.shape[1] for b in batches)
        batches = [pad_to(b, T) for b in batches]
        if len({b.ids_BT.shape[0] for b in batches}) != 1:
            raise ValueError(
                "pipeline parallel micro-batches must have equal sizes; make the batch a multiple of micro_batch_size"
            )
    else:
        T = max(b.ids_BT.shape[1] for b in batches)

    core = model.module if hasattr(model, "module") else model  # unwrap Megatron DDP

    def step(data_iterator, model):
        b = next(data_iterator)
        B, T = b.ids_BT.shape
        position_ids_BT = torch.arange(T, device=b.ids_BT.device).expand(B, T)
        # No mask: rows are right-padded, so plain causal attention already keeps padding out of
        # every real position (padded positions' outputs are never read), and the fused causal
        # kernel (common/model/attention.py) needs no [B, 1, T, T] mask built, stored or read.
        mask = None
        if output == "logps":
            # the output layer and cross entropy run on the response positions only (logprobs.py)
            rows_N, labels_1N = selected_targets(b.ids_BT, b.response_BT1)
            with output_rows(core, rows_N):
                out = model(b.ids_BT, position_ids_BT, mask, labels=labels_1N)  # -log p(labels) [1, N]

            def loss_func(nll_1N):
                return loss_fn(b, scatter_logps(-nll_1N[0].float(), b.response_BT1))
        else:
            out = model(b.ids_BT, position_ids_BT, mask)

            def loss_func(scores_BT):
                return loss_fn(b, scores_BT)

        return out, loss_func

    # Megatron's schedules read `model_type` (set by Megatron's own model builder, not by ours)
    if getattr(core, "model_type", None) is None:
        core.model_type = ModelType.encoder_or_decoder
    return get_forward_backward_func()(
        forward_step_func=step,
        data_iterator=iter(batches),
        model=[model],
        num_microbatches=len(batches),
        seq_length=T,
        micro_batch_size=batches[0].ids_BT.shape[0],
        forward_only=forward_only,
    )
