"""Applies tests/_half_precision_on_cpu.py at the start of every Python process that has this folder on its
PYTHONPATH and ODPO_HALF_PRECISION_ON_CPU=1 (the driver and the Ray workers of a test run).

`tests` is no package of the install: the helper is loaded from its file, next to this folder."""

import os

if os.environ.get("ODPO_HALF_PRECISION_ON_CPU") == "1":
    import importlib.util
    from pathlib import Path

    _path = Path(__file__).resolve().parents[1] / "_half_precision_on_cpu.py"
    _spec = importlib.util.spec_from_file_location("_half_precision_on_cpu", _path)
    _helper = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_helper)
    _helper.install()
