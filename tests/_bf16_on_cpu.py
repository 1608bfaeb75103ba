"""Test helper: let bf16 through on CPU, to run the mixed-precision path GPU runs take without a GPU.

Two things stand between that path and a CPU, and `install()` moves only those, in its own process:
- Megatron's mixed-precision optimizer (`Float16OptimizerWithFloat16Params`) and gradient clipping
  accept only parameters whose `Tensor.type()` is `torch.cuda.{BFloat16,Half,Float}Tensor`: a CPU
  tensor answers its type as the same tensor on CUDA would (MindSpeed answers for NPU tensors the
  same way, and so does common/device.py on Ascend);
- the project refuses bf16 on CPU (for a real run a configuration mistake: bf16 matmuls are slow on
  most CPUs), in the config check and in `Device.compute_dtype`: the config is checked as if it were
  fp32 (the only check that differs), and the device maps bf16 as an accelerator does.
Everything else runs as it would on a GPU, CUDA itself aside.

Used by tests/_device_check_bf16_cpu.py (one process) and, for Ray runs whose worker processes need
it too, by tests/_bf16_cpu_site/sitecustomize.py (`PYTHONPATH=tests/_bf16_cpu_site ODPO_BF16_ON_CPU=1`).
"""

from __future__ import annotations

from functools import wraps


def _answers_as_cuda(type_fn):
    @wraps(type_fn)
    def wrapper(*args, **kwargs):
        out = type_fn(*args, **kwargs)
        if isinstance(out, str) and out.startswith("torch.") and not out.startswith(("torch.cuda.", "torch.npu.")):
            return "torch.cuda." + out.removeprefix("torch.")
        return out

    return wrapper


def install() -> None:
    import torch

    if getattr(torch, "_odpo_bf16_on_cpu", False):
        return
    from omegaconf import OmegaConf

    from common import config, device

    torch.Tensor.type = _answers_as_cuda(torch.Tensor.type)
    torch.nn.Parameter.type = _answers_as_cuda(torch.nn.Parameter.type)
    device.Device.compute_dtype = lambda self, name: device._DTYPES[name]
    validate = config.validate

    def validate_as_fp32(cfg):
        if cfg.training.device != "cpu" or cfg.training.dtype == "fp32":
            return validate(cfg)
        as_fp32 = OmegaConf.merge(cfg, {"training": {"dtype": "fp32"}})
        return validate(as_fp32)

    config.validate = validate_as_fp32
    torch._odpo_bf16_on_cpu = True
