"""Declared, predictable placement of roles on Ray nodes.

The plan is computed before any worker starts: nodes are ordered (the driver's node first, then
the others by IP and node id), and roles take devices in their declared order (actor, ref,
reward), filling one node before the next. Each rank's bundle is pinned to its planned node with
Ray's node-id label, so which role lands where is known, printed, and tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ray

NODE_ID_LABEL = "ray.io/node-id"


@dataclass(frozen=True)
class Node:
    node_id: str
    ip: str
    devices: float  # this node's count of the device resource (or its CPUs when there is none)
    cpus: float


def cluster_nodes(device_resource: str | None) -> list[Node]:
    """Alive nodes, the driver's node first, then by (ip, node id)."""
    here = ray.get_runtime_context().get_node_id()
    nodes = []
    for n in ray.nodes():
        if not n["Alive"]:
            continue
        res = n["Resources"]
        devices = res.get(device_resource, 0) if device_resource else res.get("CPU", 0)
        nodes.append(Node(n["NodeID"], n["NodeManagerAddress"], devices, res.get("CPU", 0)))
    return sorted(nodes, key=lambda n: (n.node_id != here, n.ip, n.node_id))


def plan_placement(pools: dict[str, int], nodes: list[Node], device_resource: str | None) -> dict[str, list[Node]]:
    """Node of every rank of every role. Raises naming the role and the shortfall when it cannot fit.

    With a device resource a node holds as many ranks as it has devices. Without one (plain CPU
    ranks) every node takes an equal share of all ranks, so a CPU run spreads like a device run.
    """
    total = sum(pools.values())
    if device_resource:
        capacity = [int(n.devices) for n in nodes]
    else:
        capacity = [math.ceil(total / len(nodes))] * len(nodes)
    have = sum(capacity)
    if device_resource and have == 0 and total > 0:
        raise ValueError(no_device_message(pools, nodes, device_resource))
    if total > have:
        need = ", ".join(f"{r} {k}" for r, k in pools.items())
        left, unplaced = have, []
        for role, ranks in pools.items():  # roles are served in declared order: the last ones go short
            got = min(ranks, left)
            left -= got
            if got < ranks:
                unplaced.append(f"role {role} gets {got} of its {ranks}")
        raise ValueError(
            f"placement: roles need {total} {device_resource or 'rank'} slots ({need}) but the "
            f"{len(nodes)} node(s) have {have}; short by {total - have} ({'; '.join(unplaced)}): "
            "lower resource_pool.* or add nodes"
        )
    plan, node = {}, 0
    free = list(capacity)
    for role, ranks in pools.items():
        plan[role] = []
        for _ in range(ranks):
            while node < len(nodes) and free[node] == 0:
                node += 1
            if node >= len(nodes):
                raise ValueError(f"placement: role {role} does not fit on the cluster's nodes")
            free[node] -= 1
            plan[role].append(nodes[node])
    return plan


# where a node's device resource comes from, for the message of a cluster that has none
_DEVICE_SOURCE = {
    "GPU": "Ray counts a node's GPUs when the node starts: check `nvidia-smi` and CUDA_VISIBLE_DEVICES on "
    "each node, or give the count with `ray start --num-gpus=N`",
    "NPU": "Ray does not find NPUs itself: declare them when each node starts, `ray start --resources='{\"NPU\": 8}'` "
    "(docs/cluster.md)",
}


def no_device_message(pools: dict[str, int], nodes: list[Node], device_resource: str) -> str:
    """A cluster none of whose nodes has the device resource: what is missing, and where it comes from."""
    need = ", ".join(f"{r} {k}" for r, k in pools.items())
    source = _DEVICE_SOURCE.get(
        device_resource,
        f"Declare it when each node starts, `ray start --resources='{{\"{device_resource}\": N}}'`",
    )
    return (
        f"placement: no {device_resource} in the Ray cluster: the roles need {sum(pools.values())} {device_resource} "
        f"({need}) and none of its {len(nodes)} node(s) reports any. {source}; or run on "
        "CPU (training.device=cpu, resource_pool.device_resource unset)"
    )


def check_nodes(nodes: list[Node], wanted: int) -> None:
    if len(nodes) < wanted:
        raise ValueError(
            f"--nodes {wanted}: the Ray cluster has {len(nodes)} alive node(s); start the missing ones with "
            "`ray start --address=<head-ip>:6379` (docs/cluster.md) or lower --nodes"
        )


def describe(plan: dict[str, list[Node]], nodes: list[Node], colocated: tuple[str, ...] = ()) -> str:
    index = {n.node_id: i for i, n in enumerate(nodes)}
    lines = []
    for role, ranks in plan.items():
        if role in colocated:
            lines.append(f"  {role}: in actor_rollout's processes (resource_pool.colocate)")
            continue
        where = {}
        for rank, n in enumerate(ranks):
            where.setdefault(index[n.node_id], []).append(rank)
        parts = [
            f"node {i} ({nodes[i].ip}) ranks {r[0]}-{r[-1]}" if len(r) > 1 else f"node {i} ({nodes[i].ip}) rank {r[0]}"
            for i, r in where.items()
        ]
        lines.append(f"  {role}: " + "; ".join(parts))
    return "\n".join(lines)


def placement_record(
    plan: dict[str, list[Node]], layouts: dict[str, list[dict]], nodes: list[Node], colocated: tuple[str, ...] = ()
) -> dict:
    """Planned vs actual node of every rank (``placement.json``), with the pid and title of the process
    that holds it (``layouts``: each rank's, from ``RankProcess.init_distributed``), so a rank can be
    found in ``ps``/``top``, and the seconds its start took (``startup_s``: importing torch, Megatron
    and the workers, forming the world, building the role's model); raises if Ray put a rank elsewhere. A colocated role's ranks say whose
    process holds them (``"process_of": "actor_rollout"``; the same pids as the actor's)."""
    index = {n.node_id: i for i, n in enumerate(nodes)}
    record = {"nodes": [{"index": i, "node_id": n.node_id, "ip": n.ip} for i, n in enumerate(nodes)], "roles": {}}
    for role, planned in plan.items():
        got = [lay["node_id"] for lay in layouts[role]]
        host = {"process_of": "actor_rollout"} if role in colocated else {}
        record["roles"][role] = [
            {
                "rank": r,
                "planned_node": index[p.node_id],
                "node": index.get(a, -1),
                "pid": lay.get("pid"),
                "process_title": lay.get("process_title"),
                "startup_s": lay.get("startup"),
                **host,
            }
            for r, (p, a, lay) in enumerate(zip(planned, got, layouts[role]))
        ]
        wrong = [r for r, (p, a) in enumerate(zip(planned, got)) if p.node_id != a]
        if wrong:
            raise RuntimeError(f"placement: role {role} ranks {wrong} started on other nodes than planned")
    return record


def startup_summary(layouts: dict[str, list[dict]], seconds: float) -> str:
    """The driver's line once every role is ready: the time since it started, and the range over the
    roles' ranks of each part of their start (``startup_s`` of ``placement.json``)."""
    ranks = [lay["startup"] for role in layouts.values() for lay in role if lay.get("startup")]
    if not ranks:
        return f"ready {seconds:.1f} s after start"

    def span(key: str) -> str:
        low, high = min(r[key] for r in ranks), max(r[key] for r in ranks)
        return f"{high:.1f}" if round(low, 1) == round(high, 1) else f"{low:.1f}-{high:.1f}"

    return (
        f"ready {seconds:.1f} s after start; the roles' processes took {span('import_s')} s importing, "
        f"{span('world_s')} s forming their worlds, {span('build_s')} s building models (placement.json)"
    )
