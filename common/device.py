"""The one place that knows about accelerator kinds (CPU, CUDA, Ascend NPU).

Everything else in the project asks a `Device` for what it needs (process-group backend, Ray
resource name, torch device, compute dtype) instead of naming an accelerator itself.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

import torch

_KINDS = ("auto", "cpu", "cuda", "npu")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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

    def setup_worker(self, num_threads: int) -> None:
        """Prepare a fresh worker process: threads (CPU) or current device (accelerators).

        On CPU this also applies the Megatron-core CPU patches, so every worker that builds a
        Megatron model has them before its first forward.
        """
        if self.kind == "cpu":
            if num_threads < 1:
                raise ValueError(f"num_threads: got {num_threads}; give at least 1")
            torch.set_num_threads(num_threads)
            from common import megatron_cpu_patches

            megatron_cpu_patches.apply()
            return
        module = _accelerator_module(self.kind)
        # Ray (and torchrun) expose exactly the devices granted to this process; use the first.
        if module.device_count() < 1:
            raise ValueError(
                f"device: no {self.kind} device visible in this worker; check the Ray resource "
                f"request ({self.ray_resource}) and the visible-devices environment variable"
            )
        module.set_device(0)

    def synchronize(self) -> None:
        """Wait for queued device work (for timing); a no-op on CPU."""
        if self.kind != "cpu":
            _accelerator_module(self.kind).synchronize()


def _npu_available() -> bool:
    # torch_npu breaks `import torch` on machines without Ascend CANN, so it is only ever
    # imported when the package is actually installed.
    if importlib.util.find_spec("torch_npu") is None:
        return False
    importlib.import_module("torch_npu")
    return torch.npu.is_available() and torch.npu.device_count() > 0


def _accelerator_module(kind: str):
    if kind == "npu":
        importlib.import_module("torch_npu")
        return torch.npu
    return torch.cuda


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
            raise ValueError(
                "device: 'cuda' requested but this torch has no usable CUDA device "
                f"(torch {torch.__version__}); use device=cpu or install a CUDA build of torch"
            )
        return Device(kind="cuda", backend="nccl", ray_resource="GPU")
    if not _npu_available():
        raise ValueError(
            "device: 'npu' requested but torch_npu is not installed or sees no NPU; "
            "use device=cpu, or install torch_npu with Ascend CANN"
        )
    return Device(kind="npu", backend="hccl", ray_resource="NPU")
