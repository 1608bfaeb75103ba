"""Starting (or joining) Ray and placing the roles on it."""

from __future__ import annotations

import os

import ray
from omegaconf import DictConfig, OmegaConf

from common.config import PROJECT_ROOT, roles_in_use
from common.device import Device
from common.worker_group import WorkerGroup, check_capacity
from common.workers import WORKER_CLASSES


def start_ray(nodes: int) -> None:
    """One node: a private Ray instance sized to this machine. Several: join the running cluster.

    Workers import ``common`` from this checkout (the same path on every node), whatever the
    driver's current directory is.
    """
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}}
    if nodes == 1 and "RAY_ADDRESS" not in os.environ:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="warning", runtime_env=runtime_env)
        return
    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), logging_level="warning", runtime_env=runtime_env)
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) < nodes:
        raise ValueError(
            f"--nodes {nodes}: the Ray cluster has {len(alive)} alive node(s); start the missing ones with "
            "`ray start --address=<head-ip>:6379` (see README) or lower --nodes"
        )


def build_roles(cfg: DictConfig, device: Device) -> dict[str, WorkerGroup]:
    """One WorkerGroup per role in use, in a fixed order (actor, ref, reward).

    On CPU each rank gets an equal share of the cores as its Ray CPU resource, and torch threads for
    the cores its role would have alone: roles run one after another within an iteration, so a
    role's ranks never compete with another role's for cores.
    """
    roles = roles_in_use(cfg)
    pools = {role: cfg.resource_pool[role] for role in roles}
    check_capacity(pools, device)
    cores = int(ray.cluster_resources().get("CPU", 1))
    total_ranks = sum(pools.values())
    plain = OmegaConf.to_container(cfg, resolve=True)
    groups = {}
    for role in roles:
        if device.kind == "cpu":
            cpus_per_rank = cores / total_ranks
            threads = max(1, cores // pools[role])
        else:
            cpus_per_rank, threads = 1, 1
        groups[role] = WorkerGroup(role, WORKER_CLASSES[role], plain, pools[role], device, cpus_per_rank, threads)
    return {role: group.ready() for role, group in groups.items()}
