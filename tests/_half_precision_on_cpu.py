"""Test helper: let bf16 and fp16 through on CPU, to run the mixed-precision path GPU runs take without a GPU.

Two things stand between that path and a CPU, and `install()` moves only those, in its own process:
- Megatron's mixed-precision optimizer (`Float16OptimizerWithFloat16Params`) and gradient clipping
  accept only parameters whose `Tensor.type()` is `torch.cuda.{BFloat16,Half,Float}Tensor`: a CPU
  tensor answers its type as the same tensor on CUDA would (MindSpeed answers for NPU tensors the
  same way, and so does common/device/backend.py on Ascend);
- the project refuses bf16/fp16 on CPU (for a real run a configuration mistake: half-precision
  matmuls are slow on most CPUs), in the config check and in `Device.compute_dtype`: the config is
  checked as if it were fp32 (the only check that differs), and the device maps the dtype as an
  accelerator does.
Everything else runs as it would on a GPU, CUDA itself aside.

fp16's loss scaler restores its scale with `tensor.cuda()`: on CPU it keeps the tensor where it is.
`ODPO_INITIAL_LOSS_SCALE` sets fp16's first loss scale (common/train/optimizer.py's INITIAL_LOSS_SCALE), so that a test can make gradients overflow.

Used by tests/_device_check_half_precision.py (one process) and, for Ray runs whose worker processes need
it too, by tests/_half_precision_site/sitecustomize.py (`PYTHONPATH=tests/_half_precision_site ODPO_HALF_PRECISION_ON_CPU=1`).
"""

from __future__ import annotations

import os
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

    if getattr(torch, "_odpo_half_precision_on_cpu", False):
        return
    from omegaconf import OmegaConf

    from common.config import load as config_load
    from common.device import backend as device
    from common.train import optimizer

    torch.Tensor.type = _answers_as_cuda(torch.Tensor.type)
    torch.nn.Parameter.type = _answers_as_cuda(torch.nn.Parameter.type)
    device.Device.compute_dtype = lambda self, name: device._DTYPES[name]
    validate = config_load.validate  # load_config's own reference

    def validate_as_fp32(cfg):
        if cfg.training.device != "cpu" or cfg.training.dtype == "fp32":
            return validate(cfg)
        as_fp32 = OmegaConf.merge(cfg, {"training": {"dtype": "fp32"}})
        return validate(as_fp32)

    config_load.validate = validate_as_fp32

    from megatron.core.optimizer.grad_scaler import DynamicGradScaler

    def load_state_dict(self, state_dict):  # Megatron's, without `.cuda()`
        self._scale = state_dict["scale"]
        self._growth_tracker = state_dict["growth_tracker"]
        self._hysteresis_tracker = state_dict["hysteresis_tracker"]

    DynamicGradScaler.load_state_dict = load_state_dict
    if os.environ.get("ODPO_INITIAL_LOSS_SCALE"):
        optimizer.INITIAL_LOSS_SCALE = float(os.environ["ODPO_INITIAL_LOSS_SCALE"])
    torch._odpo_half_precision_on_cpu = True
