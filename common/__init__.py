"""Shared pieces of the recipes (see README "Layout").

Two things happen before any module of this package can import Megatron-core:
- on a machine with Ascend's `torch_npu` installed, `common.device` is imported first: it applies
  `torch_npu.contrib.transfer_to_npu`, which must precede Megatron's import (MindSpeed's rule);
  elsewhere this costs one package lookup;
- `torch.compile` becomes lazy and torch's optimizer stops importing `torch._dynamo` while nothing
  compiles (`common/lazy_compile.py`): ~2 s off every process start, ~0.8 s more off the actor's.
"""

import importlib.util

from common import lazy_compile

lazy_compile.install()

if importlib.util.find_spec("torch_npu") is not None:
    from common import device  # noqa: F401  (imports torch_npu + transfer_to_npu)
