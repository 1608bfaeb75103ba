"""Shared pieces of the recipes (see README "Layout").

On a machine with Ascend's `torch_npu` installed, `common.device` is imported first, before any
module of this package can import Megatron-core: it applies `torch_npu.contrib.transfer_to_npu`,
which must precede Megatron's import (MindSpeed's rule). Elsewhere this costs one package lookup.
"""

import importlib.util

if importlib.util.find_spec("torch_npu") is not None:
    from common import device  # noqa: F401  (imports torch_npu + transfer_to_npu)
