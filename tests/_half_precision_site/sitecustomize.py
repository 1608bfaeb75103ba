"""Applies tests/_half_precision_on_cpu.py at the start of every Python process that has this folder on its
PYTHONPATH and ODPO_HALF_PRECISION_ON_CPU=1 (the driver and the Ray workers of a test run)."""

import os
import sys
from pathlib import Path

if os.environ.get("ODPO_HALF_PRECISION_ON_CPU") == "1":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests._half_precision_on_cpu import install

    install()
