"""Placing the roles on Ray (started or joined by common/cluster/ray_start.py): the plan, then the processes."""

from __future__ import annotations

from collections import Counter

from omegaconf import DictConfig, OmegaConf

from common.cluster.placement import Node, check_nodes, cluster_nodes, plan_placement
from common.cluster.rank_process import PROCESS_CLASSES
from common.cluster.worker_group import GuestGroup, WorkerGroup
from common.config.roles import placed_roles
from common.device.backend import Device


def device_resource(cfg: DictConfig, device: Device) -> str | None:
    return cfg.resource_pool.device_resource or device.ray_resource


def plan_roles(cfg: DictConfig, device: Device, nodes: int) -> tuple[dict[str, list[Node]], list[Node]]:
    """The node of every rank, decided before any worker starts (fails fast on a shortfall); a
    colocated role's ranks are the actor's."""
    resource = device_resource(cfg, device)
    cluster = cluster_nodes(resource)
    check_nodes(cluster, nodes)
    used = cluster[:nodes]
    return plan_on_nodes(cfg, used, resource), used


def plan_on_nodes(cfg: DictConfig, nodes: list[Node], resource: str | None) -> dict[str, list[Node]]:
    """``plan_roles`` on given nodes, without Ray (the nodes as ``cluster_nodes`` describes them): the
    node of every rank of every role in use; a colocated role's ranks are the actor's."""
    plan = plan_placement(placed_roles(cfg), nodes, resource)
    for role in cfg.resource_pool.colocate:
        plan[role] = plan["actor_rollout"]
    return plan


def start_roles(cfg: DictConfig, device: Device, plan: dict[str, list[Node]]) -> dict[str, WorkerGroup]:
    """One WorkerGroup per role, ranks on the planned nodes: every role's processes start (and
    import torch and Megatron) at once, with the device's environment; nothing is built until
    ``form_roles``.

    Each rank gets an equal share of its node's CPUs as its Ray CPU resource; on CPU, torch threads
    for the cores its role has on that node: roles run one after another within an iteration, so a
    role's ranks never compete with another role's for cores. Roles in ``resource_pool.colocate``
    get no processes: the actor's hold them (``common.cluster.rank_process``), and their groups are views of it.
    """

    resource = device_resource(cfg, device)
    colocated = tuple(cfg.resource_pool.colocate)
    per_node = Counter(n.node_id for role, ranks in plan.items() if role not in colocated for n in ranks)
    cpus = {n.node_id: n.cpus for ranks in plan.values() for n in ranks}
    cpus_per_rank = min(cpus[i] / k for i, k in per_node.items())
    if device.kind != "cpu":
        cpus_per_rank = min(1.0, cpus_per_rank)
    plain = OmegaConf.to_container(cfg, resolve=True)
    groups = {}
    for role, nodes in plan.items():
        if role in colocated:
            groups[role] = GuestGroup(role, groups["actor_rollout"])
            continue
        role_per_node = Counter(n.node_id for n in nodes)
        threads = max(1, int(min(cpus[i] // k for i, k in role_per_node.items()))) if device.kind == "cpu" else 1
        guests = colocated if role == "actor_rollout" else ()
        groups[role] = WorkerGroup(
            role, PROCESS_CLASSES[role], plain, nodes, resource, cpus_per_rank, threads, guests, device.worker_env()
        )
    return groups


def form_roles(groups: dict[str, WorkerGroup]) -> dict[str, WorkerGroup]:
    """Each role's world forms and its models build, every role at once (``start_roles``' groups)."""
    for group in groups.values():
        group.connect()
    return {role: group.ready() for role, group in groups.items()}
