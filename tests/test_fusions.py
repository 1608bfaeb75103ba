"""The fused kernels `Device.megatron_fusions` switches on for CUDA (megatron-core's SwiGLU with
recompute-in-backward and its native fused vocab-parallel cross entropy) compute what the unfused
path computes: log-probs and every gradient, on a toy model. Run on CPU with torch.compile disabled
(TORCH_COMPILE_DISABLE=1), so this checks the fused functions' math and their wiring into our model,
not the compiled CUDA kernels (bench/device_check.sh compares both on a GPU)."""

import pytest

from tests._dist import run_world


def _fused_vs_plain(dtype_name: str) -> dict:
    import torch
    from megatron.core.models.common.language_module import language_module
    from megatron.core.transformer import mlp

    from common.config.arch import LlamaArch
    from common.device.backend import Device, apply_megatron_fusions
    from common.model.llama import build_policy
    from common.train.logprobs import token_logprobs

    calls = {"swiglu": 0, "cross_entropy": 0}

    def counted(module, name, key):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)

        setattr(module, name, wrapper)

    counted(mlp, "bias_swiglu_impl", "swiglu")  # the fused kernels really ran (not only the flags set)
    counted(language_module, "fused_vocab_parallel_cross_entropy", "cross_entropy")
    dtype = getattr(torch, dtype_name)
    fusions = Device(kind="cuda", backend="nccl", ray_resource="GPU").megatron_fusions(dtype)
    arch = LlamaArch(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
                     vocab_size=384, max_position_embeddings=64, tie_word_embeddings=True)  # fmt: skip
    ids_BT = torch.randint(0, 384, (3, 12), generator=torch.Generator().manual_seed(0))
    valid_BT = torch.ones_like(ids_BT, dtype=torch.bool)
    valid_BT[2, 9:] = False
    runs = []
    for fused in (False, True):
        model = build_policy(arch, dtype=dtype, seed=0)
        if fused:
            apply_megatron_fusions(model, fusions)
        logps_BT1 = token_logprobs(model, ids_BT, valid_BT) * valid_BT[:, 1:]
        logps_BT1.sum().backward()
        runs.append((logps_BT1.detach().float(), {n: p.grad.float() for n, p in model.named_parameters()}))
    (plain, plain_g), (fused, fused_g) = runs
    return {
        "fusions": sorted(fusions),
        "calls": calls,
        "logps": float((plain - fused).abs().max()),
        "grads": max(float((plain_g[n] - fused_g[n]).abs().max() / (plain_g[n].abs().max() + 1e-12)) for n in plain_g),
    }


@pytest.mark.parametrize("dtype, logps_tol, grad_rtol", [("float32", 1e-5, 1e-5), ("bfloat16", 0.1, 0.05)])
def test_cuda_fusions_match_the_unfused_path(monkeypatch, dtype, logps_tol, grad_rtol):
    monkeypatch.setenv("TORCH_COMPILE_DISABLE", "1")  # inherited by the spawned rank
    (r,) = run_world(_fused_vs_plain, dtype, world_size=1, tp=1)
    want = ["bias_activation_fusion"] + (
        ["cross_entropy_fusion_impl", "cross_entropy_loss_fusion"] if dtype == "bfloat16" else []
    )
    assert r["fusions"] == sorted(want)
    assert r["calls"] == {"swiglu": 2, "cross_entropy": 1 if dtype == "bfloat16" else 0}  # 2 layers, 1 forward
    assert r["logps"] <= logps_tol and r["grads"] <= grad_rtol, r
