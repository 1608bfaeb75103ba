"""Test helper: bench/device_check.py in bf16 (or fp16: ODPO_DTYPE=fp16) on CPU, the mixed-precision
path a GPU run takes (Megatron's `Float16OptimizerWithFloat16Params` with fp32 main parameters,
half-precision sampling, reward, reference and checkpoint) without the GPU;
tests/_half_precision_on_cpu.py says what it moves to get there.

    .venv/bin/python tests/_device_check_half_precision.py --device cpu --scale toy --out FILE.json

`bench` and `common` import from the project's editable install (setup.sh), or, with the GPU
machine's software (bench/device_rehearsal.sh), from the tree on PYTHONPATH.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    from _half_precision_on_cpu import install  # tests/, this script's folder: sys.path[0]

    install()
    import bench.device_check as device_check

    sys.exit(device_check.main([*sys.argv[1:], f"training.dtype={os.environ.get('ODPO_DTYPE', 'bf16')}"]))
