"""Declared placement and the group of Ray workers that make up one role.

One placement group per role (``resource_pool.<role>`` bundles, one device each, each pinned to
the node the placement plan gave its rank: common/cluster/placement.py). A ``WorkerGroup`` starts one long-lived worker per rank, forms the role's
torch.distributed world, and dispatches coarse calls: each data-parallel rank gets its own slice.
The driver calls a role through its handle (common/cluster/handles.py: ``ref.logps(seqs)``), which
passes the worker function's name to ``call_all`` / ``run_sharded`` / ``run_per_dp`` here.
Every wait also watches the other roles (``get_or_fail_fast``), so a lost worker stops the driver in
seconds, and ``restart`` replaces a role's workers on the same bundles (``training.max_restarts``).

Roles listed in ``resource_pool.colocate`` have no processes of their own: the host group's
processes hold them too (``common.cluster.rank_process``), and each is a ``GuestGroup`` that sends its
calls to its part of those processes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from common.cluster.placement import NODE_ID_LABEL, Node
from common.train.sequences import split

POLL_S = 2.0  # how often a wait on one role checks that the other roles' workers are alive


def get_or_fail_fast(refs: list, groups: list[WorkerGroup], busy: WorkerGroup) -> list:
    """``ray.get(refs)``, but a lost worker of any role fails it within ``POLL_S`` seconds instead of
    when its role is next called (the driver calls one role at a time, so the others sit idle: a
    ping answers at once, or raises ``ActorDiedError``); a rank that fails raises at once even while
    the other ranks of its world still wait for it in a collective."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
        ray.get(done)  # raises now if one of them failed
        if pending:
            pings = [w.__ray_ready__.remote() for g in groups if g.workers is not busy.workers for w in g.workers]
            answered, _ = ray.wait(pings, num_returns=len(pings), timeout=POLL_S / 4)
            ray.get(answered)
    return ray.get(refs)


GROUPS: list[WorkerGroup] = []  # every role of this driver (get_or_fail_fast watches them all)


class WorkerGroup:
    host: WorkerGroup | None = None  # set on a GuestGroup

    def __init__(self, role: str, worker_cls: type, cfg: dict, nodes: list[Node], device_resource: str | None, cpus_per_rank: float, num_threads: int,
                 guests: tuple[str, ...] = (), env: dict[str, str] | None = None):  # fmt: skip
        """One worker per entry of ``nodes`` (rank i runs on ``nodes[i]``, pinned by node id).
        ``worker_cls``: a ``common.cluster.rank_process.RankProcess``; its processes also hold the ``guests``
        (roles colocated) and get ``env`` (the device's, ``Device.worker_env``) over the job's."""
        self.role, self.guests = role, tuple(guests)
        ranks = len(nodes)
        self.pg = placement_group(
            [{"CPU": cpus_per_rank, **({device_resource: 1} if device_resource else {})}] * ranks,
            strategy="PACK",
            bundle_label_selector=[{NODE_ID_LABEL: n.node_id} for n in nodes],
            name=f"odpo-{role}",
        )
        ray.get(self.pg.ready(), timeout=120)
        self._spawn = (
            ray.remote(worker_cls),
            cfg,
            device_resource,
            cpus_per_rank,
            num_threads,
            {"env_vars": env} if env else None,
        )
        self._who = [role, *guests]  # the roles the processes hold
        self.restarts = 0
        self.spawn()
        GROUPS.append(self)

    def spawn(self) -> None:
        """One worker process per bundle, started and not awaited: every role's processes start (and
        import torch and Megatron) at once; ``connect`` then forms the world."""
        remote_cls, cfg, device_resource, cpus_per_rank, num_threads, runtime_env = self._spawn
        ranks = self.pg.bundle_count
        suffix = f".r{self.restarts}" if self.restarts else ""  # a killed actor's name may not be free yet
        self.workers = [
            remote_cls.options(
                num_cpus=cpus_per_rank,
                resources={device_resource: 1} if device_resource else None,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
                runtime_env=runtime_env,
                name=f"{self.role}-{i}{suffix}",
            ).remote(self._who, cfg, i, ranks, num_threads)
            for i in range(ranks)
        ]
        self._address = self.workers[0].master_address.remote()

    def connect(self) -> WorkerGroup:
        """Rank 0's address to every rank; the world forms and the models build in the background
        (``ready`` waits), so roles build concurrently."""
        addr, port = ray.get(self._address)
        self._pending = [w.init_distributed.remote(addr, port) for w in self.workers]
        return self

    def ready(self) -> WorkerGroup:
        """Wait until every rank has formed the world and built its model (after ``connect``)."""
        layouts = get_or_fail_fast(self._pending, [], self)  # the other roles are building too: no pings
        self.role_layouts = layouts  # {role: layout} per rank (RankProcess)
        self.layouts = [lay[self.role] for lay in layouts]
        self.dp_size = self.layouts[0]["dp_size"]
        return self

    @property
    def label(self) -> str:
        """The role, and the roles its processes also hold (failure messages)."""
        return "+".join((self.role, *self.guests))

    def _remote(self, worker, method: str, *args: Any, **kwargs: Any):
        return worker.call.remote(self.role, method, *args, **kwargs)  # this role's part of the process

    def restart(self) -> None:
        """Replace every rank with a fresh worker on the same bundle (the others of a world that lost
        a rank may wait in a collective forever); call ``ready`` afterwards."""
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.restarts += 1
        self.spawn()
        self.connect()

    def rank_of(self, actor_id: str | None) -> int | None:
        """Rank of the worker with Ray actor id ``actor_id`` (hex), if it is one of this group's."""
        ids = [w._actor_id.hex() for w in self.workers]
        return ids.index(actor_id) if actor_id in ids else None

    def call_all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call ``method`` (a worker method's name) on every rank with the same arguments; every rank's result."""
        return get_or_fail_fast([self._remote(w, method, *args, **kwargs) for w in self.workers], GROUPS, self)

    def run_sharded(self, method: str, items: list, *args: Any, **kwargs: Any) -> list[Any]:
        """Call ``method(slice, ...)`` with each data-parallel rank's contiguous slice of ``items``;
        return the output ranks' results concatenated in the order of ``items``."""
        return [x for part in self.run_per_dp(method, split(items, self.dp_size), *args, **kwargs) for x in part]

    def run_per_dp(self, method: str, shards: list, *args: Any, **kwargs: Any) -> list[Any]:
        """Call ``method(shards[dp_rank], ...)`` on every rank; the output ranks' results in data-parallel order."""
        return self.submit_per_dp(method, shards, *args, **kwargs).result()

    def submit_per_dp(self, method: str, shards: list, *args: Any, **kwargs: Any) -> Pending:
        """``run_per_dp`` without waiting: the call runs on the role's ranks while the driver goes on."""
        refs = [
            self._remote(w, method, shards[lay["dp_rank"]], *args, **kwargs)
            for w, lay in zip(self.workers, self.layouts)
        ]
        return Pending(self, refs)


class Pending:
    """A call running on a role's ranks (``WorkerGroup.submit_per_dp``); ``result`` waits for it as
    every call is waited for (a lost worker of any role fails the wait in seconds)."""

    def __init__(self, group: WorkerGroup, refs: list):
        self.group, self.refs = group, refs
        self.started, self.finished = time.perf_counter(), None  # finished: set by ``watch``

    def watch(self) -> Pending:
        """Record when the last rank answers (``finished``, ``time.perf_counter()``), without waiting."""
        left, lock = [len(self.refs)], threading.Lock()

        def answered(_future) -> None:
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    self.finished = time.perf_counter()

        for ref in self.refs:
            ref.future().add_done_callback(answered)
        return self

    def result(self) -> list[Any]:
        """The output ranks' results in data-parallel order."""
        results = get_or_fail_fast(self.refs, GROUPS, self.group)
        by_dp = {lay["dp_rank"]: r for lay, r in zip(self.group.layouts, results) if lay["is_output"]}
        return [by_dp[d] for d in range(self.group.dp_size)]


class GuestGroup(WorkerGroup):
    """A role colocated in its host group's processes (``resource_pool.colocate``): the host's
    workers and nodes, this role's own layouts; ``restart`` and ``connect`` are the host's (call the
    host's first: it is earlier in the session's roles), and a lost process is reported as the host's."""

    def __init__(self, role: str, host: WorkerGroup):
        self.role, self.host, self.guests = role, host, ()

    @property
    def workers(self) -> list:
        return self.host.workers

    @property
    def label(self) -> str:
        return self.host.label

    def connect(self) -> GuestGroup:
        return self

    def restart(self) -> None:
        pass

    def ready(self) -> GuestGroup:
        self.layouts = [lay[self.role] for lay in self.host.role_layouts]
        self.dp_size = self.layouts[0]["dp_size"]
        return self
