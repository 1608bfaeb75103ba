"""torch's compiler, ``torch._dynamo``, imported only by a process that compiles: ~2-3 s off every start.

Two things import it in a process that never compiles anything:

- Megatron-core wraps two dozen functions in ``torch.compile`` when it is imported (``jit_fuser``,
  the fusions of megatron/core/fusions). Each wrap costs ~30 ms, the first one imports torch._dynamo
  (~1.4 s), and the project calls none of them on CPU (``Device.fusions``, common/device/backend.py). Here
  ``torch.compile(fn, **options)`` returns a wrapper that calls the real ``torch.compile(fn,
  **options)`` the first time it is called and uses the compiled function from then on: the same
  function, compiled with the same options, when it is used at all.
- ``torch.optim``: ``Optimizer`` marks four methods ``torch._disable_dynamo`` (``add_param_group``,
  which its constructor calls, ``zero_grad``, ``state_dict``, ``load_state_dict``), "do not trace this
  when compiling", applied by importing torch._dynamo at their first call; ``Adam.step`` (AdamW's, the
  optimizer Megatron-core uses without Transformer Engine or Apex) imports it at every call to place
  two ``graph_break()``s, which do nothing outside a compilation (~0.8 s at the actor's first build).
  Nothing can be compiling while torch._dynamo has not been imported, so until then these methods
  run the undecorated function (``step`` under the grad mode torch's wrapper sets); once it has been
  imported, torch's own wrappers, as before.

Installed by ``common/__init__.py`` before anything imports Megatron.
"""

from __future__ import annotations

import functools
import sys

import torch

_real_compile = torch.compile
DYNAMO_DISABLED_OPTIMIZER_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


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


def _undecorated_until_dynamo(decorated, *, grad_mode_from_defaults: bool = False):
    """``decorated`` (one of torch's dynamo wrappers) while torch._dynamo is imported; before that,
    the function it wraps. ``grad_mode_from_defaults``: run it under the grad mode torch's
    ``_use_grad_for_differentiable`` sets for an optimizer's ``step`` (``defaults["differentiable"]``)."""
    plain = decorated.__wrapped__

    @functools.wraps(plain)
    def call(*args, **kwargs):
        if "torch._dynamo" in sys.modules:
            return decorated(*args, **kwargs)
        if not grad_mode_from_defaults:
            return plain(*args, **kwargs)
        with torch.set_grad_enabled(args[0].defaults["differentiable"]):
            return plain(*args, **kwargs)

    call.__dynamo_decorated__ = decorated
    return call


def install() -> None:
    torch.compile = lazy_compile
    # Adam.step before any Adam exists: torch then wraps it in its profiler hook ("hooked")
    targets = [(torch.optim.Optimizer, name, False) for name in DYNAMO_DISABLED_OPTIMIZER_METHODS] + [
        (torch.optim.Adam, "step", True)
    ]
    for owner, name, grad_mode in targets:
        method = owner.__dict__[name]
        if (
            hasattr(method, "__wrapped__")
            and not hasattr(method, "__dynamo_decorated__")
            and not getattr(method, "hooked", False)
        ):
            setattr(owner, name, _undecorated_until_dynamo(method, grad_mode_from_defaults=grad_mode))
