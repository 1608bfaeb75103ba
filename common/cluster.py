"""Starting (or joining) Ray and placing the roles on it."""

from __future__ import annotations

import atexit
import os
import socket
import threading
from collections import Counter

import ray
from omegaconf import DictConfig, OmegaConf
from ray.exceptions import AuthenticationError

from common.config import PROJECT_ROOT, placed_roles
from common.device import Device
from common.placement import Node, check_nodes, cluster_nodes, plan_placement
from common.quiet import quiet_private_ray
from common.rank_process import PROCESS_CLASSES
from common.worker_group import GuestGroup, WorkerGroup


NO_CLUSTER = "no Ray cluster found; start one with `ray start --head ...` or set RAY_ADDRESS (README: Placement and several nodes)"


def cluster_address() -> str:
    """The cluster a multi-node run joins: ``RAY_ADDRESS``, else the one ``ray start`` started on
    this node (Ray records its address under the Ray temp folder). Never another process's private
    ``ray.init`` instance, which Ray's own ``address="auto"`` would join. Raises when neither
    names a cluster that answers."""
    from ray._private.services import find_bootstrap_address

    address = os.environ.get("RAY_ADDRESS", "")
    source = f"RAY_ADDRESS={address}"
    if address in ("", "auto"):
        address, source = find_bootstrap_address(None), "the cluster `ray start` recorded on this node"
        if not address:
            raise ValueError(NO_CLUSTER)
    host, _, port = address.rpartition(":")
    if "://" not in address and port.isdigit():  # host:port of a GCS: does anything answer there?
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError:
            raise ValueError(f"{source}: nothing answers at {address}; " + NO_CLUSTER) from None
    return address


def private_instance(nodes: int) -> bool:
    """A run on one node without ``RAY_ADDRESS`` gets its own Ray instance (``ray.init``)."""
    return nodes == 1 and "RAY_ADDRESS" not in os.environ


def start_ray(nodes: int, worker_env: dict[str, str] | None = None) -> None:
    """One node: a private Ray instance sized to this machine. Several: join the running cluster
    (``cluster_address``).

    Workers import ``common`` from this checkout (the same path on every node), whatever the
    driver's current directory is, and get ``worker_env`` (the device's, ``Device.worker_env``).
    """
    pythonpath = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    # PyTorch's kernel choice follows the driver's on every node (a joined cluster's raylets were
    # started without it): this is how the curves are checked under other CPU kernels
    kernels = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY",) if k in os.environ}
    runtime_env = {"env_vars": {"PYTHONPATH": pythonpath, **kernels, **(worker_env or {})}}
    if private_instance(nodes):
        quiet_private_ray()
        # address="local": always a private instance, never an unrelated cluster running on this machine
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="warning", runtime_env=runtime_env)
    else:
        address = cluster_address()
        try:
            ray.init(address=address, logging_level="warning", runtime_env=runtime_env)
        except AuthenticationError:
            raise ValueError(
                f"Ray cluster at {address}: refused this driver's authentication token; copy ~/.ray/auth_token "
                "from the head node (or export RAY_AUTH_TOKEN) and set RAY_AUTH_MODE=token (README: Placement and several nodes)"
            ) from None
        except ConnectionError as e:
            raise ValueError(f"Ray cluster at {address}: could not join it ({e}); " + NO_CLUSTER) from None


class BackgroundRay:
    """A private Ray instance (``start_ray(1, ...)``) starting on a thread while the driver does its
    own checks: loading the tokenizer and reading the prompts take about as long as Ray's start
    (~2.5-3 s each on 2 cores; Ray's start is mostly waiting for its processes).

    No worker is created before ``wait`` returns, so a bad input still fails before any model is
    built, its message printed at once; ``cancel`` shuts down what started when the process exits.
    The thread stays (idle) for the life of the process: Ray's processes are tied to the thread
    that started them (Linux ``PR_SET_PDEATHSIG`` fires when that *thread* ends), so it must not
    return.
    """

    def __init__(self, worker_env: dict[str, str]):
        self._started = threading.Event()
        self._error: BaseException | None = None
        threading.Thread(target=self._run, args=(worker_env,), name="ray-start", daemon=True).start()

    def _run(self, worker_env: dict[str, str]) -> None:
        try:
            start_ray(1, worker_env)
        except BaseException as e:  # noqa: BLE001 - re-raised by wait() on the driver's thread
            self._error = e
        finally:
            self._started.set()
        threading.Event().wait()

    def wait(self) -> None:
        """Until Ray is up; raises what its start raised."""
        self._started.wait()
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        """The driver's checks failed: the instance is shut down when the process exits (once its
        start has finished), after the error message is printed: the message does not wait for Ray."""
        atexit.register(self._shut_down)

    def _shut_down(self) -> None:
        self._started.wait()
        ray.shutdown()


def device_resource(cfg: DictConfig, device: Device) -> str | None:
    return cfg.resource_pool.device_resource or device.ray_resource


def plan_roles(cfg: DictConfig, device: Device, nodes: int) -> tuple[dict[str, list[Node]], list[Node]]:
    """The node of every rank, decided before any worker starts (fails fast on a shortfall); a
    colocated role's ranks are the actor's."""
    resource = device_resource(cfg, device)
    cluster = cluster_nodes(resource)
    check_nodes(cluster, nodes)
    used = cluster[:nodes]
    plan = plan_placement(placed_roles(cfg), used, resource)
    for role in cfg.resource_pool.colocate:
        plan[role] = plan["actor_rollout"]
    return plan, used


def build_roles(cfg: DictConfig, device: Device, plan: dict[str, list[Node]]) -> dict[str, WorkerGroup]:
    """One WorkerGroup per role, ranks on the planned nodes.

    Each rank gets an equal share of its node's CPUs as its Ray CPU resource; on CPU, torch threads
    for the cores its role has on that node: roles run one after another within an iteration, so a
    role's ranks never compete with another role's for cores. Roles in ``resource_pool.colocate``
    get no processes: the actor's hold them (``common.rank_process``), and their groups are views of it.
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
        groups[role] = WorkerGroup(role, PROCESS_CLASSES[role], plain, nodes, resource, cpus_per_rank, threads, guests)
    for group in groups.values():  # every role's processes were started above, together: now each world forms
        group.connect()
    return {role: group.ready() for role, group in groups.items()}
