"""Test helper: bench/device_check.py in bf16 (or fp16: ODPO_DTYPE=fp16) on CPU, the mixed-precision
path a GPU run takes (Megatron's `Float16OptimizerWithFloat16Params` with fp32 main parameters,
half-precision sampling, reward, reference and checkpoint) without the GPU;
tests/_half_precision_on_cpu.py says what it moves to get there.

    .venv/bin/python tests/_device_check_half_precision.py --device cpu --scale toy --out FILE.json
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":
    from tests._half_precision_on_cpu import install

    install()
    import bench.device_check as device_check

    sys.exit(device_check.main([*sys.argv[1:], f"training.dtype={os.environ.get('ODPO_DTYPE', 'bf16')}"]))
