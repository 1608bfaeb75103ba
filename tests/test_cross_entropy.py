"""The blocked cross entropy (common/device/cross_entropy.py) gives Megatron-core's numbers bit for bit,
loss and gradient, with TP 1 and 2; and the CPU setup keeps freed memory for reuse."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from tests._dist import run_world

S, B, V = 7, 3, 640  # 21 rows: not a multiple of the block's 8 rows


def _both_ways(seed: int) -> dict:
    """On this rank: Megatron's vocab-parallel cross entropy and the blocked one on the same
    logits part (the full [S, B, V] logits split over the TP ranks), with and without a backward."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.cross_entropy import vocab_parallel_cross_entropy as megatron_ce

    from common.device.cross_entropy import blocked_vocab_parallel_cross_entropy

    g = torch.Generator().manual_seed(seed)
    full = torch.randn(S, B, V, generator=g) * 4
    target = torch.randint(0, V, (S, B), generator=g)
    grad_loss = torch.randn(S, B, generator=g)
    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    part = full.chunk(tp, dim=-1)[rank].contiguous()

    out = {}
    for name, fn in (("megatron", megatron_ce), ("blocked", blocked_vocab_parallel_cross_entropy)):
        leaf = part.clone().requires_grad_(True)
        loss = fn(leaf * 1.0, target)  # a non-leaf input, as the output layer's result is
        loss.backward(grad_loss)
        with torch.no_grad():
            out[name] = {"loss": loss.detach(), "grad": leaf.grad, "no_grad_loss": fn(part.clone(), target)}
    return out


def _assert_identical(result: dict) -> None:
    for key in ("loss", "grad", "no_grad_loss"):
        a, b = result["megatron"][key], result["blocked"][key]
        assert torch.equal(a, b), f"{key}: max |diff| {(a - b).abs().max().item():.3g}"


def test_blocked_cross_entropy_is_megatrons_bit_for_bit(world1):
    for seed in range(3):
        _assert_identical(_both_ways(seed))


@pytest.mark.slow
def test_blocked_cross_entropy_is_megatrons_bit_for_bit_with_tp2():
    for rank in run_world(_both_ways, 0, world_size=2, tp=2):
        _assert_identical(rank)


def test_cpu_setup_routes_megatron_models_through_it(world1):
    import megatron.core.tensor_parallel as tensor_parallel

    from common.device.cross_entropy import blocked_vocab_parallel_cross_entropy

    assert tensor_parallel.vocab_parallel_cross_entropy is blocked_vocab_parallel_cross_entropy
    with pytest.raises(ValueError, match="label_smoothing"):
        blocked_vocab_parallel_cross_entropy(torch.zeros(1, 1, 8), torch.zeros(1, 1, dtype=torch.long), 0.1)


_FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from common.device.backend import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(24):  # a 64 MB tensor, freed again, 24 times
        before = faults()
        torch.empty(64 * 2**20 // 4).fill_(1.0)
        print(faults() - before)
    """
)


@pytest.mark.parametrize("mode", ["keep", "default"])
def test_keep_freed_memory_reuses_large_blocks(mode):
    """Once `keep_freed_memory` ran, a new 64 MB tensor reuses freed pages (no page faults) after
    the first few (the heap grows until a freed block fits: the 64-byte alignment's padding keeps
    the same size from fitting its predecessor's block at once); with glibc's defaults every one
    is mapped afresh (16,384 faults of 4 KB pages, >= 32 with transparent huge pages)."""
    run = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
    last = [int(n) for n in run.stdout.split()[-4:]]
    if mode == "keep":
        assert sum(last) < 64, f"page faults of the last four 64 MB tensors: {last}"
    else:
        assert min(last) >= 16, f"page faults with glibc's defaults: {last}: the test measures nothing"
