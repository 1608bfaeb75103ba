"""Dtype names as configs and command lines spell them, and what each means (the one home).

Importing this module does not import torch (the config is checked before anything heavy loads).
"""

from __future__ import annotations

DTYPE_NAMES = ("fp32", "bf16", "fp16")
BYTES_PER_ELEMENT = {"fp32": 4, "bf16": 2, "fp16": 2}


def torch_dtype(name: str):
    """The torch dtype of ``name`` (one of DTYPE_NAMES)."""
    import torch

    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"dtype: unknown name {name!r}; use one of {', '.join(DTYPE_NAMES)}")
    return table[name]
