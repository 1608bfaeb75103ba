"""Test helper: bench/device_check.py in bf16 on CPU, the mixed-precision path a GPU run takes
(Megatron's `Float16OptimizerWithFloat16Params` with fp32 main parameters, bf16 sampling, reward,
reference and checkpoint) without the GPU.

    .venv/bin/python tests/_device_check_bf16_cpu.py --device cpu --scale toy --out FILE.json

Two things stand between that path and a CPU, and this script moves only those, in its own process:
- Megatron's mixed-precision optimizer and gradient clipping accept only parameters whose
  `Tensor.type()` is `torch.cuda.{BFloat16,Half,Float}Tensor`; here a CPU tensor answers its type
  as the same tensor on CUDA would (MindSpeed answers for NPU tensors the same way, and so does
  common/device.py on Ascend);
- the project refuses bf16 on CPU (a configuration mistake for a run: bf16 matmuls are slow on most
  CPUs), in the config check and in `Device.compute_dtype`: the config is loaded as written (fp32 on
  CPU) and then switched to bf16, and the device maps bf16 like an accelerator does.
Everything else is the check as the GPU machine runs it.
"""

from __future__ import annotations

import sys
from functools import wraps
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _answers_as_cuda(type_fn):
    @wraps(type_fn)
    def wrapper(*args, **kwargs):
        out = type_fn(*args, **kwargs)
        if isinstance(out, str) and out.startswith("torch.") and not out.startswith(("torch.cuda.", "torch.npu.")):
            return "torch.cuda." + out.removeprefix("torch.")
        return out

    return wrapper


def main() -> int:
    torch.Tensor.type = _answers_as_cuda(torch.Tensor.type)
    torch.nn.Parameter.type = _answers_as_cuda(torch.nn.Parameter.type)

    import bench.device_check as device_check
    from omegaconf import OmegaConf

    from common import device

    device.Device.compute_dtype = lambda self, name: device._DTYPES[name]
    load_config = device_check.load_config

    def load_config_bf16(*args, **kwargs):
        cfg = load_config(*args, **kwargs)
        OmegaConf.set_readonly(cfg, False)
        cfg.training.dtype = "bf16"
        OmegaConf.set_readonly(cfg, True)
        return cfg

    device_check.load_config = load_config_bf16
    return device_check.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
