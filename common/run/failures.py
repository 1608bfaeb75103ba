"""What went wrong in a worker, in one sentence the user can act on.

Ray reports a lost worker as ``ActorDiedError`` (the process is gone: killed, out of memory,
crashed, or its node left) and an exception inside a worker method as ``RayTaskError`` (with the
worker's traceback). Both are turned into: which role and rank, on which node, and the likely
cause. The full Ray text goes to ``failure.txt`` in the run folder, not to the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass

from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from common.cluster.worker_group import WorkerGroup

WORKER_ERRORS = (RayActorError, RayTaskError)  # what a call on a worker group raises when a worker fails


@dataclass
class WorkerFailure:
    role: str  # "?" when the worker is not one of the run's; "actor_rollout+ref" for colocated roles
    rank: int | None
    node: str  # IP of the worker's node
    cause: str  # likely cause, one line
    lost: bool  # the process is gone (restartable); False: an error raised by the worker's code
    details: str  # Ray's full text (failure.txt)

    def where(self) -> str:
        rank = f" rank {self.rank}" if self.rank is not None else ""
        return f"worker {self.role}{rank} on node {self.node}"


def _actor_hex(actor_id) -> str | None:
    if actor_id is None or isinstance(actor_id, str):
        return actor_id
    from ray import ActorID

    return ActorID(actor_id).hex()


def _likely_cause(text: str) -> str:
    """One line from Ray's report of a dead actor (its text lists every possible cause of a lost
    process, so the checks go from the most specific report to the least)."""
    low = text.lower()
    if "low on memory" in low or "outofmemoryerror" in low:
        return "the node ran low on memory and Ray's OOM killer ended it; lower the batch or micro-batch sizes"
    if "its node has died" in low or "node died" in low or "node was terminated" in low or "preempt" in low:
        return "its node left the cluster (stopped, rebooted or preempted)"
    if "unexpectedly exits" in low or "system_error" in low or "unexpected_system_exit" in low:
        return (
            "its process ended without an error of its own: killed from outside (kill -9, a job scheduler, "
            "the kernel's OOM killer: see dmesg) or crashed (e.g. SIGSEGV)"
        )
    if "intended_user_exit" in low or "ray.kill" in low:
        return "it was stopped on purpose (ray.kill or a Ray shutdown)"
    return text.strip().splitlines()[-1] if text.strip() else "unknown"


def describe_failure(err: Exception, roles: dict[str, WorkerGroup]) -> WorkerFailure:
    """Role, rank, node and likely cause of ``err`` (one of ``WORKER_ERRORS``)."""
    if isinstance(err, RayTaskError):
        actor_id, details = _actor_hex(getattr(err, "_actor_id", None)), str(err)
        cause = (
            f"{type(err.cause).__name__}: {err.cause}" if err.cause is not None else details.strip().splitlines()[-1]
        )
        lost = False
    else:
        actor_id, details = _actor_hex(err.actor_id), err.error_msg
        cause = _likely_cause(details)
        lost = isinstance(err, ActorDiedError) and not err.actor_init_failed
    for group in roles.values():  # a process that holds several roles (resource_pool.colocate) names them all
        rank = group.rank_of(actor_id)
        if rank is not None:
            layouts = getattr(group, "layouts", None)
            node = layouts[rank]["node_ip"] if layouts else "?"
            return WorkerFailure(group.label, rank, node, cause.splitlines()[0], lost, details)
    ip = getattr(err, "ip", None) or "?"
    return WorkerFailure("?", None, ip, cause.splitlines()[0], lost, details)
