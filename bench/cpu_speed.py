"""This machine's fp32 matmul speed, the number the suite's times scale with.

    .venv/bin/python -m bench.cpu_speed          # prints GFLOP/s and the CPU model

The test suite's time is mostly fp32 matmuls on the CPU (every model forward and backward), and 2-core
machines of the same name measure from ~100 to ~400 GFLOP/s. docs/testing.md gives the suite's times
with the number this prints beside them, so a time measured on one machine can be scaled to another.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def matmul_gflops(n: int = 2048, repeats: int = 10, rounds: int = 3) -> float:
    """Best of ``rounds`` of ``repeats`` [n, n] x [n, n] fp32 products, with torch's threads as set."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):  # warm-up: thread pool, page faults
        a @ b
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeats / best / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    args = p.parse_args()
    import torch

    print(f"{cpu_model()}, {torch.get_num_threads()} threads: {matmul_gflops(args.size):.0f} GFLOP/s fp32 matmul")


if __name__ == "__main__":
    main()
