"""A multi-node Ray cluster simulated on one machine: one raylet per node, each with its own resources.

    .venv/bin/python -m tools.simulated_cluster --nodes 2             # prints RAY_ADDRESS, Ctrl-C stops it
    RAY_ADDRESS=<printed> ./run.sh llama3_8b --nodes 2 --overlay cpu_scale resource_pool.device_resource=NPU

Each node declares ``--cpus`` logical CPUs and ``{"NPU": --npus}``, so a CPU run with
``resource_pool.device_resource=NPU`` is placed exactly as it would be on NPU nodes
(``ray start ... --resources='{"NPU": 8}'``). The raylets share this machine's cores: placement and
communication are real, speed is not. Used by the recipe tests and ``tools/record_curve.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def simulated_cluster(nodes: int = 2, cpus: int = 8, npus: int = 8) -> Iterator[str]:
    """Start ``nodes`` raylets on this machine; yields the cluster address (for ``RAY_ADDRESS``)."""
    # throwaway local clusters: no token auth (the project default keeps Ray's auth for real ones)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from ray.cluster_utils import Cluster

    node_args = {"num_cpus": cpus, "resources": {"NPU": npus} if npus else {}}
    cluster = Cluster(initialize_head=True, head_node_args=node_args)
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**node_args)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


@contextmanager
def cluster_process(nodes: int = 2, cpus: int = 8, npus: int = 8) -> Iterator[str]:
    """``simulated_cluster`` in a process of its own (this module's command line); yields its address.

    For callers that fork afterwards (pytest running data preparation's worker pool in-process):
    a cluster started in the caller leaves Ray's client threads there, and a fork of a process with
    threads can deadlock."""
    import signal
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.simulated_cluster", "--nodes", str(nodes), "--cpus", str(cpus), "--npus", str(npus)],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        address = next(
            (line.split("RAY_ADDRESS=", 1)[1].strip() for line in proc.stdout if "RAY_ADDRESS=" in line), None
        )
        if address is None:
            raise RuntimeError(f"tools.simulated_cluster ended (status {proc.wait()}) without printing RAY_ADDRESS")
        yield address
    finally:
        proc.send_signal(signal.SIGINT)  # main() shuts its cluster down on Ctrl-C
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--cpus", type=int, default=8, help="logical CPUs per node")
    p.add_argument("--npus", type=int, default=8, help='"NPU" resources per node')
    args = p.parse_args()
    with simulated_cluster(args.nodes, args.cpus, args.npus) as address:
        print(
            f"{args.nodes} nodes up ({args.cpus} CPUs, {args.npus} NPU each). In another shell:\n  export RAY_ADDRESS={address}",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping the cluster", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
