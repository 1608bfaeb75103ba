"""The Ray actor of one rank's process, importable without torch's distributed side or Megatron.

The driver names the class of every role's processes (``ray.remote``) but never builds a model, so
it does not import what the workers import: ``common.workers`` (Megatron-core, ~1.2 s on 2 cores,
on the path to the first iteration) is imported in the worker process, by ``RankProcess``.

A process holds one role's worker (``common.workers.WORKER_CLASSES``) or, with
``resource_pool.colocate``, the actor's training rank and the reference and/or reward model of the
same rank: the roles have the same ranks, TP and PP, so one torch.distributed world and one
Megatron parallel state serve them all; the driver calls one role at a time (``call``), so they
never compete for the process's cores. What colocation saves is the start-up (Ray, torch and
Megatron imported once instead of once per role) and the memory of the extra processes; what is
computed is the same. The subclasses only name the processes after their first role
(``ray::ReferenceProcess`` in ``ps``).
"""

from __future__ import annotations

from typing import Any


class RankProcess:
    def __init__(self, roles: list[str], cfg: dict, rank: int, world_size: int, num_threads: int):
        from common.workers import WORKER_CLASSES  # torch, Megatron: in this process only

        self.parts = {role: WORKER_CLASSES[role](role, cfg, rank, world_size, num_threads) for role in roles}
        self.host = self.parts[roles[0]]
        if "ref" in self.parts and self.host.role == "actor_rollout":  # built after the host: may copy its weights
            self.parts["ref"].actor = self.host

    def master_address(self) -> tuple[str, int]:
        return self.host.master_address()

    def init_distributed(self, master_addr: str, master_port: int) -> dict[str, dict[str, Any]]:
        """The world forms once (the first role builds its model then), then the others build;
        each role's layout (ranks, node)."""
        layouts = {self.host.role: self.host.init_distributed(master_addr, master_port)}
        for role, part in self.parts.items():
            if part is not self.host:
                part.build()
                layouts[role] = part.layout()
        return layouts

    def call(self, role: str, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.parts[role], method)(*args, **kwargs)


class ActorRolloutProcess(RankProcess):
    """The actor's training (and, without dedicated generating ranks, generating) ranks."""


class RolloutProcess(RankProcess):
    """Dedicated generating ranks."""


class ReferenceProcess(RankProcess):
    """The frozen reference."""


class RewardProcess(RankProcess):
    """The reward model."""


PROCESS_CLASSES = {"actor_rollout": ActorRolloutProcess, "rollout": RolloutProcess, "ref": ReferenceProcess, "reward": RewardProcess}
