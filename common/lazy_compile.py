"""``torch.compile`` deferred to a compiled function's first call: ~2 s off every process's start.

Megatron-core wraps two dozen functions in ``torch.compile`` when it is imported (``jit_fuser``, the
fusions of megatron/core/fusions). Each wrap costs ~30 ms, the first one imports torch._dynamo
(~1.4 s), and the project calls none of them on CPU (``Device.fusions``, common/device.py), yet the
driver and every worker paid ~2 s for them before their first iteration. Here ``torch.compile(fn,
**options)`` returns a wrapper that calls the real ``torch.compile(fn, **options)`` the first time it
is called and uses the compiled function from then on: the same function, compiled with the same
options, when it is used at all. Installed by ``common/__init__.py`` before anything imports Megatron.
"""

from __future__ import annotations

import functools

import torch

_real_compile = torch.compile


def _deferred(fn, options: dict):
    compiled = None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal compiled
        if compiled is None:
            compiled = _real_compile(fn, **options)
        return compiled(*args, **kwargs)

    call.__wrapped_uncompiled__ = fn
    return call


def lazy_compile(model=None, **options):
    """``torch.compile`` with the compile step moved to the first call (``torch.compile``'s signature)."""
    if model is None:  # used as @torch.compile(mode=...): a decorator
        return lambda fn: lazy_compile(fn, **options)
    if isinstance(model, torch.nn.Module):  # modules keep torch's own path (none at import time)
        return _real_compile(model, **options)
    return _deferred(model, options)


def install() -> None:
    torch.compile = lazy_compile
