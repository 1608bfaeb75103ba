"""Shared pieces of the recipes (see README "Layout").

Two things happen before any module of this package can import Megatron-core:
- on a machine with Ascend's `torch_npu` installed, `common.device` is imported first: it applies
  `torch_npu.contrib.transfer_to_npu`, which must precede Megatron's import (MindSpeed's rule);
  elsewhere this costs one package lookup;
- `torch.compile` becomes lazy (`common/lazy_compile.py`): Megatron's import-time wraps compile on
  first use instead of costing ~2 s at every process start.
"""

import importlib.util

from common import lazy_compile

lazy_compile.install()

if importlib.util.find_spec("torch_npu") is not None:
    from common import device  # noqa: F401  (imports torch_npu + transfer_to_npu)
