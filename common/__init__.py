"""Shared pieces of the recipes (README "Layout": one package per concern).

Importing the package imports nothing heavy: ``./run.sh`` (common/run/launch.py) starts Ray's processes
before the driver imports torch. Two things still happen before any module of this package can
import Megatron-core:
- on a machine with Ascend's `torch_npu` installed, `common.device.backend` is imported first: it applies
  `torch_npu.contrib.transfer_to_npu`, which must precede Megatron's import (MindSpeed's rule);
  elsewhere this costs one package lookup;
- `torch.compile` becomes lazy and torch's optimizer stops importing `torch._dynamo` while nothing
  compiles (`common/device/lazy_compile.py`): ~2 s off every process start, ~0.8 s more off the actor's.
  It is installed the moment torch's own import finishes (``_AfterImport``), whoever imports
  torch first, and so before Megatron's import, which imports torch first.
"""

import importlib.abc
import importlib.util
import sys


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then()`` right after module ``name`` is executed by its own loader (once).

    A finder ahead of the others: for ``name`` it asks the others for the module's spec and wraps
    that spec's loader's ``exec_module``; any other module is left to the others."""

    def __init__(self, name: str, then):
        self.name, self.then = name, then

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # the others find the spec; this finder is done either way
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def execute_then(module):
            execute(module)
            self.then()

        spec.loader.exec_module = execute_then  # this spec's loader instance only
        return spec


def _install_lazy_compile() -> None:
    from common.device import lazy_compile

    lazy_compile.install()


if "torch" in sys.modules:
    _install_lazy_compile()
else:
    sys.meta_path.insert(0, _AfterImport("torch", _install_lazy_compile))

if importlib.util.find_spec("torch_npu") is not None:
    from common.device import backend as device  # noqa: F401  (imports torch_npu + transfer_to_npu)
