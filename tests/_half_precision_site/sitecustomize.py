"""Applies tests/_half_precision_on_cpu.py at the start of every Python process that has this folder on its
PYTHONPATH and ODPO_HALF_PRECISION_ON_CPU=1 (the driver and the Ray workers of a test run).

Ray's own service processes (dashboard, its agent, the runtime-env agent, the log monitor: scripts of
the `ray` package outside `ray/_private/workers/`) run no project code and are left alone: the helper
imports torch, Megatron and the project (~5 s of CPU each), and the raylet gives its agent 30 s to start,
which on a busy 2-core machine it then missed ("The current node timed out during startup").

`tests` is no package of the install: the helper is loaded from its file, next to this folder."""

import importlib.util
import os
import sys
from pathlib import Path


def _ray_service() -> bool:
    """Whether this process runs a script of the `ray` package other than its worker entry points."""
    script = next((a for a in sys.orig_argv[1:] if a.endswith(".py")), None)
    spec = importlib.util.find_spec("ray") if script else None  # finds the package, imports nothing
    if spec is None or not spec.submodule_search_locations:
        return False
    ray_dir, path = Path(spec.submodule_search_locations[0]).resolve(), Path(script).resolve()
    return path.is_relative_to(ray_dir) and not path.is_relative_to(ray_dir / "_private" / "workers")


if os.environ.get("ODPO_HALF_PRECISION_ON_CPU") == "1" and not _ray_service():
    _path = Path(__file__).resolve().parents[1] / "_half_precision_on_cpu.py"
    _spec = importlib.util.spec_from_file_location("_half_precision_on_cpu", _path)
    _helper = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_helper)
    _helper.install()
