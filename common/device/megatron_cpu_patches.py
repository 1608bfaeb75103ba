"""The one module of Megatron-core CPU patches (megatron-core 0.16.1, torch CPU build).

Megatron-core's local (non-Transformer-Engine) model code runs on CPU with the gloo backend, but
a handful of code paths assume CUDA. `apply()` fixes exactly those, is idempotent, and is only
ever called on CPU (by `Device.setup_worker`); on CUDA/NPU nothing here runs.

Patches, and why each is needed:

1. "torch.cuda as seen from Megatron": every loaded `megatron.core.*` module gets a private view
   of `torch` whose `torch.cuda.current_device()` is the CPU device, whose
   `torch.cuda.synchronize()` is a no-op, whose `torch.cuda.{get_rng_state,set_rng_state,
   manual_seed}` act on the CPU generator, and whose tensor factories (`empty`, `zeros`, `ones`,
   `full`, `tensor`, `arange`) map a hard-coded `device="cuda"` to the CPU. This covers, without
   copying any Megatron code:
   - `utils.GlobalMemoryBuffer.get_tensor` (allocates on `torch.cuda.current_device()`),
   - `transformer.utils.get_default_causal_mask` / `get_sliding_window_causal_mask`
     (`device="cuda"`; `fusions.fused_softmax` calls the same functions),
   - RoPE (`RotaryEmbedding.get_emb` moves `inv_freq` to `torch.cuda.current_device()`), the
     static KV-cache buffers (`Attention._allocate_memory`) and the TP all-gather output buffers,
   - pipeline schedules / p2p communication (`current_device`, `synchronize`, `device="cuda"`),
   - `optimizer.clip_grads.get_grad_norm_fp32` (`device="cuda"` norm buffers),
   - `tensor_parallel.random.model_parallel_cuda_manual_seed` and `CudaRNGStatesTracker.add`
     (seed/read the CUDA generator -> the CPU generator).
   Everything else (`torch.cuda.is_available()` included) still answers truthfully, so Megatron
   keeps taking its non-CUDA branches. Only modules already imported are covered: `apply()`
   imports the modules this project uses first; call it again after importing other Megatron
   modules (it is idempotent).
2. `tensor_parallel.random._get_cuda_rng_state/_set_cuda_rng_state` read and write the CUDA
   generator through `torch.cuda.default_generators`: replaced with CPU-generator versions, and
   `CudaRNGStatesTracker.fork` with a version that swaps the CPU generator state in and out
   (Megatron's version warns whenever the CPU generator is used inside a fork, which on CPU is
   every dropout call inside a tensor-parallel region).
3. `optimizer.clip_grads.clip_grad_by_total_norm_fp32` asserts gradients are
   `torch.cuda.FloatTensor`: replaced with a version that checks the dtype instead.
4. Speed, not correctness: `tensor_parallel.vocab_parallel_cross_entropy` (what GPTModel's
   `labels=` path calls) is replaced with common/device/cross_entropy.py's blocked version: the same
   numbers bit for bit, ~2.5x faster forward on CPU (each block of logits read from memory once).

Known gaps (not patched; fail loudly, never silently): `DistributedOptimizer` and the fp16/bf16
optimizers check `param.type() == 'torch.cuda.FloatTensor'`; tied embeddings with pipeline
parallelism call `weight.data.cuda()`.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types

import torch

# Megatron modules that must be imported before the sweep so their view of torch is patched.
_MODULES_TO_IMPORT = (
    "megatron.core.utils",
    "megatron.core.parallel_state",
    "megatron.core.tensor_parallel.random",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.cross_entropy",
    "megatron.core.transformer.utils",
    "megatron.core.transformer.attention",
    "megatron.core.transformer.dot_product_attention",
    "megatron.core.transformer.transformer_block",
    "megatron.core.transformer.transformer_layer",
    "megatron.core.fusions.fused_softmax",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.inference.contexts.static_context",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.optimizer",
    "megatron.core.distributed",
    "megatron.core.distributed.finalize_model_grads",
)

_CPU = torch.device("cpu")
_FACTORIES = ("empty", "zeros", "ones", "full", "tensor", "arange")
_torch_view: types.ModuleType | None = None
_applied = False


def _is_cuda(device) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


def _cpu_factory(factory):
    def wrapped(*args, **kwargs):
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = _CPU
        return factory(*args, **kwargs)

    wrapped.__name__ = factory.__name__
    return wrapped


def _make_torch_view() -> types.ModuleType:
    """A copy of the `torch` namespace with the CPU stand-ins of patch 1."""
    cuda_view = types.ModuleType("torch.cuda")
    cuda_view.__dict__.update(torch.cuda.__dict__)
    cuda_view.current_device = lambda: _CPU
    cuda_view.synchronize = lambda device=None: None
    cuda_view.get_rng_state = lambda device="cuda": torch.get_rng_state()
    cuda_view.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
    cuda_view.manual_seed = lambda seed: torch.manual_seed(seed)

    view = types.ModuleType("torch")
    view.__dict__.update(torch.__dict__)
    view.cuda = cuda_view
    for name in _FACTORIES:
        setattr(view, name, _cpu_factory(getattr(torch, name)))
    # Attributes torch creates lazily after this copy (e.g. submodules imported later).
    view.__getattr__ = lambda name: getattr(torch, name)
    cuda_view.__getattr__ = lambda name: getattr(torch.cuda, name)
    return view


def _get_cpu_rng_state(device="cuda", clone: bool = False, graph_safe: bool = False):
    return torch.get_rng_state()


def _set_cpu_rng_state(new_state, device=-1, graph_safe: bool = False):
    torch.set_rng_state(new_state)


@contextlib.contextmanager
def _cpu_fork(self, name="model-parallel-rng"):
    """Run the body with the tracked CPU generator state `name`, then restore the outer state."""
    if name not in self.states_:
        raise KeyError(f"rng tracker: state {name!r} was never added; call add() first")
    outer_state = torch.get_rng_state()
    torch.set_rng_state(self.states_[name])
    try:
        yield
    finally:
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(outer_state)


def _clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """Megatron's function minus the CUDA type assert: scale fp32 grads in place by the clip."""
    from megatron.core.utils import to_local_if_dtensor

    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = []
    for param in parameters:
        grad = getattr(param, "decoupled_grad", None) if use_decoupled_grad else param.grad
        if grad is None:
            continue
        allowed = (torch.float32, torch.bfloat16) if use_decoupled_grad else (torch.float32,)
        assert grad.dtype in allowed, f"clip_grad_by_total_norm_fp32: got {grad.dtype} grads"
        grads.append(to_local_if_dtensor(grad).detach())
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


def _sweep_megatron_modules() -> None:
    for name, module in list(sys.modules.items()):
        if name.startswith("megatron.core") and getattr(module, "torch", None) is torch:
            module.torch = _torch_view


def apply() -> None:
    """Apply all CPU patches (idempotent; re-sweeps newly imported Megatron modules)."""
    global _torch_view, _applied
    if _torch_view is None:
        _torch_view = _make_torch_view()
    for name in _MODULES_TO_IMPORT:
        importlib.import_module(name)
    _sweep_megatron_modules()
    if _applied:
        return

    import megatron.core.tensor_parallel
    from megatron.core.optimizer import clip_grads, optimizer
    from megatron.core.tensor_parallel import random

    from common.device.cross_entropy import blocked_vocab_parallel_cross_entropy

    random._get_cuda_rng_state = _get_cpu_rng_state
    random._set_cuda_rng_state = _set_cpu_rng_state
    random.CudaRNGStatesTracker.fork = _cpu_fork
    clip_grads.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32
    optimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32
    megatron.core.tensor_parallel.vocab_parallel_cross_entropy = blocked_vocab_parallel_cross_entropy
    _applied = True
