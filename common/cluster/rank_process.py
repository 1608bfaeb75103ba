"""The Ray actor of one rank's process, importable without torch's distributed side or Megatron.

The driver names the class of every role's processes (``ray.remote``) but never builds a model, so
it does not import what the workers import: Megatron-core (~1.2 s on 2 cores, on the path to the
first iteration) is imported in the worker process, by ``RankProcess``. (The driver does import
``common.cluster.workers``, whose methods its role handles name: that module imports no Megatron.)

A process holds one role's worker (``common.cluster.workers.WORKER_CLASSES``) or, with
``resource_pool.colocate``, the actor's training rank and the reference and/or reward model of the
same rank: the roles have the same ranks, TP and PP, so one torch.distributed world and one
Megatron parallel state serve them all; the driver calls one role at a time (``call``), so they
never compete for the process's cores. What colocation saves is the start-up (Ray, torch and
Megatron imported once instead of once per role) and the memory of the extra processes; what is
computed is the same. The subclasses only name the processes after their first role
(``ray::ReferenceProcess`` in ``ps``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


class RankProcess:
    def __init__(self, roles: list[str], cfg: dict, rank: int, world_size: int, num_threads: int):
        started = time.perf_counter()
        from common.util.quiet import filter_library_warnings

        filter_library_warnings()  # before Megatron's import: its import-time warnings say nothing here
        from common.cluster.workers import WORKER_CLASSES, import_megatron

        import_megatron()  # in this process only, now: while the driver's checks go on
        self.parts = {role: WORKER_CLASSES[role](role, cfg, rank, world_size, num_threads) for role in roles}
        self.host = self.parts[roles[0]]
        self.startup = {"import_s": round(time.perf_counter() - started, 3)}  # torch, Megatron, the workers
        if "ref" in self.parts and self.host.role == "actor_rollout":  # built after the host: may copy its weights
            self.parts["ref"].actor = self.host

    def master_address(self) -> tuple[str, int]:
        return self.host.master_address()

    def init_distributed(self, master_addr: str, master_port: int) -> dict[str, dict[str, Any]]:
        """The world forms once (the first role builds its model then), then the others build;
        each role's layout (ranks, node), this process's id and title, and how long its start took
        (``placement.json``: seconds importing, forming the world, building each role's model)."""
        start = time.perf_counter()
        layouts = {self.host.role: self.host.init_distributed(master_addr, master_port)}
        self.startup["world_s"] = round(self.host.world_seconds, 3)
        built = {self.host.role: time.perf_counter() - start - self.host.world_seconds}
        for role, part in self.parts.items():
            if part is not self.host:
                start = time.perf_counter()
                part.build()
                built[role] = time.perf_counter() - start
                layouts[role] = part.layout()
        here = {"pid": os.getpid(), "process_title": process_title()}
        return {
            role: {**layout, **here, "startup": {**self.startup, "build_s": round(built[role], 3)}}
            for role, layout in layouts.items()
        }

    def call(self, role: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``method`` of this process's worker of ``role``: what a role handle sends
        (``common.cluster.handles``; the name is its worker function's ``__name__``)."""
        return getattr(self.parts[role], method)(*args, **kwargs)


def process_title() -> str | None:
    """This process's title as ``ps`` shows it between calls, e.g. ``ray::ActorRolloutProcess``
    (Ray sets it, and appends ``.<method>`` while a call runs: left out here); None without /proc."""
    try:
        title = Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return None
    return title.rsplit(".", 1)[0] if title.startswith("ray::") and "." in title else title


class ActorRolloutProcess(RankProcess):
    """The actor's training (and, without dedicated generating ranks, generating) ranks."""


class RolloutProcess(RankProcess):
    """Dedicated generating ranks."""


class ReferenceProcess(RankProcess):
    """The frozen reference."""


class RewardProcess(RankProcess):
    """The reward model."""


PROCESS_CLASSES = {
    "actor_rollout": ActorRolloutProcess,
    "rollout": RolloutProcess,
    "ref": ReferenceProcess,
    "reward": RewardProcess,
}
