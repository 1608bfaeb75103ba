"""Log-probs at response positions only (the output layer sees just those hidden states) equal
the full computation over every position, for TP=1, TP=2 and through the PP=2 schedules.

Run: .venv/bin/python -m pytest tests/test_response_logprobs.py -q
"""

from __future__ import annotations

import pytest
import torch

from tests._dist import run_world

VOCAB = 1000  # padded to 1024: the padded-id masking runs on the picked rows too
ARCH = dict(
    num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
    vocab_size=VOCAB, max_position_embeddings=256,
)  # fmt: skip


def _batch():
    """Right-padded prompt + response sequences of mixed lengths."""
    from common.train.sequences import Sequence, pad_batch

    g = torch.Generator().manual_seed(5)
    seqs = [
        Sequence(
            torch.randint(0, VOCAB, (p,), generator=g).tolist(), torch.randint(0, VOCAB, (r,), generator=g).tolist()
        )
        for p, r in ((7, 5), (3, 9), (12, 2), (5, 5))
    ]
    return pad_batch(seqs)


def compute() -> dict:
    """Full and response-only log-probs and gradients on this rank's world (PP=1)."""
    from common.model.llama import LlamaArch, build_policy
    from common.train.logprobs import token_logprobs

    policy = build_policy(LlamaArch(**ARCH), dtype=torch.float32, seed=0)
    b = _batch()
    out = {}
    for name, select in (("full", None), ("picked", b.response_BT1)):
        policy.zero_grad()
        logps_BT1 = token_logprobs(policy, b.ids_BT, b.valid_BT, select_BT1=select)
        masked_BT1 = logps_BT1 * b.response_BT1
        masked_BT1.sum().backward()
        out[name] = masked_BT1.detach()
        out[name + "_raw"] = logps_BT1.detach()
        out[name + "_grads"] = {n: p.grad.clone() for n, p in policy.named_parameters()}
    return out


def schedule_logps() -> list:
    """Reference-style forward through Megatron's schedules (any PP): summed response log-probs."""
    from common.model.llama import LlamaArch, build_policy
    from common.train.schedule import run_microbatches
    from common.train.sequences import summed_response_logps

    policy = build_policy(LlamaArch(**ARCH), dtype=torch.float32, seed=0)
    b = _batch()

    def collect(batch, logps_BT1):
        return logps_BT1.new_zeros(()), {"sum": summed_response_logps(logps_BT1, batch), "logps": logps_BT1}

    with torch.no_grad():
        return run_microbatches(policy, [b, b], collect, forward_only=True)


@pytest.fixture(scope="module")
def tp1(world1):
    return compute()


def test_response_only_equals_full_tp1(tp1):
    b = _batch()
    # fp32 noise only: the picked rows go through the same matmul as a smaller batch
    torch.testing.assert_close(tp1["picked"], tp1["full"], atol=2e-5, rtol=0)
    assert (tp1["picked_raw"][~b.response_BT1] == 0).all()  # nothing computed at prompt positions
    for name, g in tp1["full_grads"].items():
        torch.testing.assert_close(tp1["picked_grads"][name], g, atol=1e-6, rtol=1e-4, msg=name)


def test_response_only_equals_full_tp2(tp1):
    ranks = run_world(compute, world_size=2, tp=2)
    for out in ranks:  # every TP rank returns the whole (vocab-parallel reduced) log-probs
        torch.testing.assert_close(out["picked"], tp1["full"], atol=2e-5, rtol=0)
        torch.testing.assert_close(out["picked"], out["full"], atol=2e-5, rtol=0)
        for name, g in out["full_grads"].items():  # this rank's shards, the output layer's vocabulary shard included
            torch.testing.assert_close(out["picked_grads"][name], g, atol=1e-6, rtol=1e-4, msg=name)


def test_schedule_response_logps_tp1_and_pp2(tp1):
    b = _batch()
    expected_B = tp1["full"].sum(dim=1)
    stats = schedule_logps()
    for s in stats:
        torch.testing.assert_close(s["sum"], expected_B, atol=1e-4, rtol=0)
    ranks = run_world(schedule_logps, world_size=2, tp=1, pp=2)
    last = next(r for r in ranks if r)
    assert len(last) == 2
    for s in last:
        torch.testing.assert_close(s["sum"], expected_B, atol=1e-4, rtol=0)
        assert (s["logps"][~b.response_BT1] == 0).all()
