"""The actor's optimizer (common/train/optimizer.py): torch's fused Adam kernel is switched on, and its
steps equal the per-op Adam's to fp32 rounding (same gradients, same schedule, clipping on).

Run: .venv/bin/python -m pytest tests/test_optimizer.py -q
"""

from __future__ import annotations

import torch

ARCH = dict(
    num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
    vocab_size=1000, max_position_embeddings=128,
)  # fmt: skip


def _actor(fused: bool):
    from common.model.llama import LlamaArch, build_policy
    from common.train.optimizer import AdamSettings, build_actor_optimizer

    settings = AdamSettings(
        lr=1e-3, min_lr=0.0, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8,
        clip_grad=0.5, lr_warmup_fraction=0.0, lr_decay_style="constant",
    )  # fmt: skip
    model, optimizer, scheduler = build_actor_optimizer(
        build_policy(LlamaArch(**ARCH), dtype=torch.float32, seed=0), settings, dtype=torch.float32, total_steps=10
    )
    groups = [g for o in optimizer.chained_optimizers for g in o.optimizer.param_groups]
    if not fused:
        for group in groups:
            group["fused"] = False
    return model, optimizer, scheduler, groups


def test_fused_adam_steps_equal_the_per_op_steps(world1):
    from common.train.optimizer import train_step
    from common.train.sequences import Sequence, micro_batches

    g = torch.Generator().manual_seed(3)
    seqs = [
        Sequence(torch.randint(0, 1000, (6,), generator=g).tolist(), torch.randint(0, 1000, (5,), generator=g).tolist())
        for _ in range(4)
    ]

    def loss_fn(batch, logps_BT1):
        loss = -(logps_BT1 * batch.response_BT1).sum() / 100
        return loss, {}

    runs = {}
    for fused in (True, False):
        model, optimizer, scheduler, groups = _actor(fused)
        assert all(group["fused"] is fused for group in groups)
        norms = [
            train_step(model, optimizer, scheduler, micro_batches(seqs, 4, torch.device("cpu")), loss_fn)[0]
            for _ in range(3)
        ]
        runs[fused] = norms, {n: p.detach().clone() for n, p in model.module.named_parameters()}
    (norms_fused, fused), (norms_plain, plain) = runs[True], runs[False]
    assert norms_fused[0] > 0.5  # clipping was active
    torch.testing.assert_close(norms_fused, norms_plain, rtol=1e-5, atol=0)
    start = {n: p.detach() for n, p in _actor(False)[0].module.named_parameters()}
    for name, p in plain.items():
        assert not torch.equal(p, start[name]), name  # every parameter moved
        torch.testing.assert_close(fused[name], p, rtol=1e-5, atol=1e-7, msg=name)
