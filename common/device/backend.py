"""The one place that knows about accelerator kinds (CPU, CUDA, Ascend NPU).

Everything else in the project asks a `Device` for what it needs (process-group backend, Ray
resource name, torch device, compute dtype, memory counters, peak FLOP/s) instead of naming an
accelerator itself.

Ascend NPUs, the way MindSpeed does it: `torch_npu` is imported and
`torch_npu.contrib.transfer_to_npu` applied *before Megatron-core is imported* (Megatron calls
`torch.cuda.*` directly: `current_device()` in RoPE, the KV cache and p2p communication; the
transfer maps those calls, `device="cuda"` and `.cuda()` to the NPU). MindSpeed's adaptor also
makes `Tensor.type()` / `Parameter.type()` answer `torch.cuda.*Tensor` for NPU tensors, because
Megatron's `Float16OptimizerWithFloat16Params` and `clip_grad_by_total_norm_fp32` accept only
`torch.cuda.{BFloat16,Half,Float}Tensor`; `_bootstrap_npu` does the same. It runs when this module
is imported, and `common/__init__.py` imports this module first whenever `torch_npu` is installed,
so every entry point (Ray workers, tools, tests) has it before its first Megatron import.
`torch_npu` is never imported where it is not installed: on a machine without Ascend CANN it breaks
`import torch` itself. With it installed, `torch.cuda` *is* the NPU for the whole process, so a
`device=cpu` run is not supported on such a machine.

Each Ray worker picks its NPU the way the original system (MindSpeed-LLM rlxf) did: the driver
starts Ray with `RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES=1` in the workers' environment
(`worker_env`), so Ray does not narrow `ASCEND_RT_VISIBLE_DEVICES` per worker and every worker
sees the node's NPUs under their physical ids; the worker then sets the device Ray granted it
(`ray.get_runtime_context().get_accelerator_ids()["NPU"]`, the custom `NPU` resource).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import resource
import sys
import time
from dataclasses import dataclass
from functools import wraps

import torch

_KINDS = ("auto", "cpu", "cuda", "npu")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NPU_NOSET_ENV = "RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES"

# Dense bf16 peak FLOP/s per device, for model FLOP utilisation (MFU). First match of the device
# name wins, so more specific names come first.
_BF16_PEAKS = (
    ("H100 PCIe", 756e12, "NVIDIA H100 PCIe datasheet: 756 TFLOP/s dense bf16"),
    ("H100", 989e12, "NVIDIA H100 SXM datasheet: 989 TFLOP/s dense bf16 (1,979 with sparsity)"),
    ("H200", 989e12, "NVIDIA H200 datasheet: 989 TFLOP/s dense bf16, same GH100 compute as H100 SXM"),
    ("A100", 312e12, "NVIDIA A100 datasheet: 312 TFLOP/s dense bf16"),
    (
        "910B",
        313e12,
        "assumption: Ascend 910B ~313 TFLOP/s half precision (the commonly quoted fp16 figure; "
        "bf16 taken as equal, and it differs between 910B SKUs): not a measured or vendor bf16 number",
    ),
)


def npu_installed() -> bool:
    """Whether the `torch_npu` package is installed (looked up, never imported)."""
    return importlib.util.find_spec("torch_npu") is not None


def _type_answers_cuda(fn):
    """`Tensor.type()` with 'npu' reported as 'cuda' (MindSpeed's `type_wrapper`)."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        return out.replace("npu", "cuda") if isinstance(out, str) else out

    return wrapper


def _bootstrap_npu() -> None:
    """Import torch_npu and apply transfer_to_npu (+ the `type()` answer); idempotent."""
    if getattr(torch, "_odpo_npu_bootstrapped", False):
        return
    importlib.import_module("torch_npu")
    importlib.import_module("torch_npu.contrib.transfer_to_npu")
    torch.Tensor.type = _type_answers_cuda(torch.Tensor.type)
    torch.nn.Parameter.type = _type_answers_cuda(torch.nn.Parameter.type)
    torch._odpo_npu_bootstrapped = True


if npu_installed():  # before anything imports Megatron (common/__init__.py imports this module first)
    _bootstrap_npu()


def npu_install_hint() -> str:
    """What to install for device=npu, for this torch."""
    torch_version = torch.__version__.split("+")[0]
    return (
        "install Ascend CANN (toolkit + kernels for your NPU, matching its driver; then `source "
        "/usr/local/Ascend/ascend-toolkit/set_env.sh`) and the torch_npu build for this torch: "
        f"`.venv/bin/pip install torch-npu=={torch_version}` (torch_npu versions follow torch's; "
        "`./setup.sh --npu-notes` prints every step)"
    )


@dataclass(frozen=True)
class Device:
    kind: str  # 'cpu' | 'cuda' | 'npu'
    backend: str  # torch.distributed backend: 'gloo' | 'nccl' | 'hccl'
    ray_resource: str | None  # Ray resource a worker must request; None on CPU

    def torch_device(self) -> torch.device:
        """The device this process computes on (the current one for accelerators)."""
        if self.kind == "cpu":
            return torch.device("cpu")
        return torch.device(self.kind, _accelerator_module(self.kind).current_device())

    def compute_dtype(self, name: str) -> torch.dtype:
        """Map a config dtype name to a torch dtype, refusing half precision on CPU.

        bf16 matmuls run about 500x slower than fp32 on the CPUs this project is tested on, so a
        bf16 CPU run is a configuration mistake, not a choice.
        """
        if name not in _DTYPES:
            raise ValueError(f"dtype: unknown name {name!r}; use one of {sorted(_DTYPES)}")
        if self.kind == "cpu" and name != "fp32":
            raise ValueError(
                f"dtype: {name} on CPU is about 500x slower than fp32 (no fast half-precision "
                "matmul on CPU); set the dtype to fp32 for CPU runs"
            )
        return _DTYPES[name]

    def worker_env(self) -> dict[str, str]:
        """Environment for a process that computes on this device (the driver gives it to every Ray
        worker; bench/device_check.py sets it on itself before the first allocation):

        - NPU: `RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES=1` (see the module docstring);
        - the caching allocator's expandable segments (`PYTORCH_CUDA_ALLOC_CONF` /
          `PYTORCH_NPU_ALLOC_CONF`), which keep the generate / train alternation from fragmenting
          memory; a value the user already set is kept.
        """
        env = {NPU_NOSET_ENV: "1"} if self.kind == "npu" else {}
        alloc = {"cuda": "PYTORCH_CUDA_ALLOC_CONF", "npu": "PYTORCH_NPU_ALLOC_CONF"}.get(self.kind)
        if alloc and alloc not in os.environ:
            env[alloc] = "expandable_segments:True"
        return env

    def setup_worker(self, num_threads: int) -> None:
        """Prepare a fresh worker process: threads (CPU) or current device (accelerators).

        On CPU this also applies the Megatron-core CPU patches, so every worker that builds a
        Megatron model has them before its first forward, and keeps freed memory for reuse
        (`keep_freed_memory`).
        """
        if self.kind == "cpu":
            if num_threads < 1:
                raise ValueError(f"num_threads: got {num_threads}; give at least 1")
            torch.set_num_threads(num_threads)
            keep_freed_memory()
            from common.device import megatron_cpu_patches

            megatron_cpu_patches.apply()
            return
        module = _accelerator_module(self.kind)
        if module.device_count() < 1:
            raise ValueError(
                f"device: no {self.kind} device visible in this worker; check the Ray resource "
                f"request ({self.ray_resource}) and the visible-devices environment variable"
            )
        # CUDA: Ray (and torchrun) expose exactly the devices granted to this process; use the
        # first. NPU inside Ray: every NPU is visible, take the one Ray granted (the original's way).
        module.set_device(_ray_npu_index() if self.kind == "npu" else 0)

    def synchronize(self) -> None:
        """Wait for queued device work (for timing); a no-op on CPU."""
        if self.kind != "cpu":
            _accelerator_module(self.kind).synchronize()

    # --- measuring (bench/device_check.py) ----------------------------------------------------

    def name(self) -> str:
        if self.kind == "cpu":
            import platform

            return platform.processor() or platform.machine()
        return _accelerator_module(self.kind).get_device_name()

    def environment(self) -> dict[str, object]:
        """Runtime versions and device count, for reports."""
        if self.kind == "cpu":
            return {"cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
        module = _accelerator_module(self.kind)
        info: dict[str, object] = {"device_count": module.device_count()}
        if self.kind == "cuda":
            info.update(cuda=torch.version.cuda, capability=list(torch.cuda.get_device_capability()))
        else:
            info.update(torch_npu=getattr(sys.modules.get("torch_npu"), "__version__", None))
        return info

    def reset_peak_memory(self) -> None:
        if self.kind != "cpu":
            _accelerator_module(self.kind).reset_peak_memory_stats()

    def memory_allocated(self) -> int | None:
        """Bytes held by tensors now (None on CPU: no allocator counter)."""
        return None if self.kind == "cpu" else _accelerator_module(self.kind).memory_allocated()

    def peak_memory(self) -> dict[str, int]:
        """Peak bytes since the last reset: allocated and reserved by the caching allocator on an
        accelerator; on CPU the process's peak resident set size (never reset)."""
        if self.kind == "cpu":
            return {"max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        module = _accelerator_module(self.kind)
        return {"max_allocated": module.max_memory_allocated(), "max_reserved": module.max_memory_reserved()}

    def total_memory(self) -> int | None:
        if self.kind == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        module = _accelerator_module(self.kind)
        return module.get_device_properties(module.current_device()).total_memory

    def peak_flops(self, dtype: torch.dtype) -> tuple[float | None, str]:
        """(peak FLOP/s, where the number comes from) for matmuls in `dtype` on this device.

        Accelerators: the dense bf16 datasheet figure of a known device (None when the device or
        the dtype is not in the table). CPU: measured here, the best of a few fp32 2048^3 matmuls
        on the threads torch uses.
        """
        if self.kind == "cpu":
            return _measured_cpu_matmul_flops(), f"measured: best fp32 2048^3 matmul, {torch.get_num_threads()} threads"
        name = self.name()
        if dtype != torch.bfloat16:
            return None, f"no peak table for {dtype} on {name}; pass --peak-tflops"
        for key, flops, source in _BF16_PEAKS:
            if key in name:
                return flops, source
        return None, f"device {name!r} not in the bf16 peak table (common/device/backend.py); pass --peak-tflops"

    # --- Megatron-core kernels that need no Transformer Engine -------------------------------

    def megatron_fusions(self, dtype: torch.dtype) -> dict[str, object]:
        """TransformerConfig fields for the fused kernels megatron-core 0.16.1 offers without
        Transformer Engine or Apex, on this device. Both are torch code, compiled by megatron's
        `jit_fuser` (torch.compile) or plain torch, and keep less for backward than the unfused path:

        - `bias_activation_fusion` with SwiGLU: `SwiGLUFunction` saves only the fc1 output and
          recomputes silu(gate) * up in backward (the unfused path keeps gate, up and silu(gate));
        - `cross_entropy_loss_fusion` with `cross_entropy_fusion_impl='native'`: megatron's fused
          vocab-parallel cross entropy (bf16 only: its backward casts the gradient to bf16).

        Not offered without TE/Apex, so left off everywhere: `masked_softmax_fusion` (needs the
        compiled `scaled_masked_softmax_cuda`), `apply_rope_fusion`, `persist_layer_norm`,
        `gradient_accumulation_fusion`. CPU and NPU get none (torch.compile's CPU code path costs
        minutes on a 2-core machine; Ascend's compiler path is unverified).
        """
        if self.kind != "cuda":
            return {}
        fusions: dict[str, object] = {"bias_activation_fusion": True}
        if dtype == torch.bfloat16:
            fusions.update(cross_entropy_loss_fusion=True, cross_entropy_fusion_impl="native")
        return fusions


def apply_megatron_fusions(model, fusions: dict[str, object]) -> None:
    """Switch the given fused kernels on in a built model (its modules read these TransformerConfig
    fields at forward time; the model's config object is shared by every module)."""
    config = model.config
    for key, value in fusions.items():
        if not hasattr(config, key):
            raise ValueError(f"megatron fusions: TransformerConfig has no field {key!r}")
        setattr(config, key, value)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_KEEP_FREE_BYTES = 2**31 - 1  # the largest trim threshold mallopt takes (a C int)


def keep_freed_memory() -> bool:
    """CPU: make glibc's malloc serve every allocation from its heap and keep what is freed there
    (up to ~2 GiB at the top) for the next allocation, instead of mapping each large tensor fresh
    from the kernel and unmapping it when freed. Returns False where the C library has no
    `mallopt` (non-glibc), which changes nothing else.

    By default glibc maps every allocation above 32 MB on its own and unmaps it on free, so each new
    [1024, 128k] fp32 logits tensor (525 MB: output layer, cross entropy, its gradient) takes ~130k
    page faults whose zero-filling costs ~0.1-0.2 s, again at every step: 0.45-0.8 GB of fresh pages
    per training step, reference pass and rollout on the BENCH CONFIG (measured with
    getrusage's minor faults); with this, once the heap has grown to fit the steps' sizes (a few
    steps), ~3 faults a step. The cost: a worker's resident memory stays at its high-water mark
    instead of shrinking between phases (the BENCH CONFIG's peak: 4.61 against 4.50 GiB before).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library already loaded (no ldconfig subprocess)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_FREE_BYTES))


_cpu_peak: float | None = None


def _measured_cpu_matmul_flops(n: int = 2048, repeats: int = 3) -> float:
    global _cpu_peak
    if _cpu_peak is None:
        a, b = torch.randn(n, n), torch.randn(n, n)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        _cpu_peak = 2 * n**3 / best
    return _cpu_peak


def _ray_npu_index() -> int:
    """This worker's NPU index: the id Ray granted from the `NPU` resource (0 outside Ray).

    With `ASCEND_RT_VISIBLE_DEVICES` set by the user (and kept by Ray, see `worker_env`) an id
    is a position in that list, as Ray's own NPU device manager maps it.
    """
    if "ray" not in sys.modules:  # not a Ray worker (a single-process check, a test)
        return 0
    import ray

    if not ray.is_initialized():
        return 0
    ids = [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("NPU", [])]
    if not ids:
        raise ValueError(
            "device: this Ray worker was granted no NPU; request the `NPU` resource "
            "(resource_pool.device_resource) for every rank"
        )
    visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "")
    if visible and visible != "NoDevFiles":
        order = visible.split(",")
        if ids[0] not in order:
            raise ValueError(f"device: Ray granted NPU {ids[0]} but ASCEND_RT_VISIBLE_DEVICES={visible} hides it")
        return order.index(ids[0])
    return int(ids[0])


def _npu_available() -> bool:
    # torch_npu breaks `import torch` on machines without Ascend CANN, so it is only ever
    # imported when the package is actually installed.
    if not npu_installed():
        return False
    _bootstrap_npu()
    return torch.npu.is_available() and torch.npu.device_count() > 0


def _accelerator_module(kind: str):
    if kind == "npu":
        _bootstrap_npu()
        return torch.npu
    return torch.cuda


def cuda_missing() -> str:
    """What this machine lacks for device=cuda (when ``torch.cuda.is_available()`` is False), and the fix."""
    if torch.version.cuda is None:
        return (
            f"this torch ({torch.__version__}) is a build without CUDA: install a CUDA build of torch "
            "(https://pytorch.org/get-started/locally/) on a machine with an NVIDIA GPU"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: CUDA_VISIBLE_DEVICES={visible!r} hides them all"
    if not os.path.exists("/proc/driver/nvidia/version"):
        return (
            f"torch {torch.__version__} is built for CUDA {torch.version.cuda}, and this machine has no NVIDIA GPU "
            "driver (no /proc/driver/nvidia/version; `nvidia-smi` shows what the machine has)"
        )
    return (
        f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU although an NVIDIA driver is "
        f"loaded: check `nvidia-smi`, CUDA_VISIBLE_DEVICES ({visible!r}) and that the driver supports CUDA "
        f"{torch.version.cuda}"
    )


def resolve_device(kind: str) -> Device:
    """Turn a config value ('auto' | 'cpu' | 'cuda' | 'npu') into a Device.

    'auto' prefers an Ascend NPU, then CUDA, then CPU.
    """
    if kind not in _KINDS:
        raise ValueError(f"device: unknown kind {kind!r}; use one of {list(_KINDS)}")
    if kind == "auto":
        if _npu_available():
            kind = "npu"
        elif torch.cuda.is_available():
            kind = "cuda"
        else:
            kind = "cpu"
    if kind == "cpu":
        return Device(kind="cpu", backend="gloo", ray_resource=None)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: 'cuda' requested but {cuda_missing()}; or set training.device=cpu")
        return Device(kind="cuda", backend="nccl", ray_resource="GPU")
    if not npu_installed():
        raise ValueError(
            f"device: 'npu' requested but torch_npu is not installed; {npu_install_hint()}; or use device=cpu"
        )
    if not _npu_available():
        raise ValueError(
            "device: 'npu' requested; torch_npu is installed but sees no NPU (torch.npu.is_available() "
            "is False): check the NPU driver (`npu-smi info`), that CANN's set_env.sh was sourced, and "
            "ASCEND_RT_VISIBLE_DEVICES"
        )
    return Device(kind="npu", backend="hccl", ray_resource="NPU")
