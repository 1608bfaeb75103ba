"""What went wrong in a worker, in one sentence the user can act on.

Ray reports a lost worker as ``ActorDiedError`` (the process is gone: killed, out of memory,
crashed, or its node left) and an exception inside a worker method as ``RayTaskError`` (with the
worker's traceback). Both are turned into: which role and rank, on which node, and the likely
cause. The full Ray text goes to ``failure.txt`` in the run folder, not to the terminal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from common.cluster.worker_group import WorkerGroup
from common.reward.functions import last_line

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


def _actor_id_in(text: str) -> str | None:
    """The ``actor_id=<hex>`` of the first ``ray::Class.method() (pid=..., ip=..., actor_id=...)`` line."""
    match = re.search(r"actor_id=([0-9a-f]{16,})", text)
    return match.group(1) if match else None


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
        details = str(err)
        # Ray's copy of a worker's exception (``RayTaskError(ValueError)``) drops the actor id
        # (its dual class skips RayTaskError.__init__); the traceback's header line keeps it
        actor_id = _actor_hex(getattr(err, "_actor_id", None)) or _actor_id_in(details)
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


def driver_failure(err: BaseException) -> str:
    """One line for an error raised in the driver itself (not in a worker): the errors the run
    raises on purpose say what failed and what to do; anything else is named with the project
    function it came from and its own last line (the traceback goes to ``failure.txt``)."""
    from common.reward.functions import RewardFunctionError
    from common.run.checkpoint import CheckpointWriteError

    if isinstance(err, (RewardFunctionError, CheckpointWriteError)):
        return str(err)
    where = _project_frame(err)
    return f"the driver failed{where}: {type(err).__name__}: {last_line(err)} (a bug or a bad input: see failure.txt)"


def _project_frame(err: BaseException) -> str:
    """`` in fn (common/x/y.py line N)``: the innermost frame of the error in this project's code."""
    import traceback
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(root) and ".venv" not in path.parts:
            return f" in {frame.name} ({path.relative_to(root)} line {frame.lineno})"
    return ""


def os_error(err: BaseException) -> OSError | None:
    """The ``OSError`` behind ``err``: itself, a worker's (``RayTaskError.cause``), or a cause in its chain."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, RayTaskError):  # before OSError: Ray's copy of a worker's OSError is both
            if isinstance(err.cause, OSError):
                return err.cause
        elif isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__
    return None


def error_reason(err: BaseException) -> str:
    """``[Errno 28] No space left on device``: an OS error as the user knows it, else its last line."""
    os_err = os_error(err)
    if os_err is not None and os_err.strerror:
        return f"[Errno {os_err.errno}] {os_err.strerror}"
    if isinstance(err, RayTaskError) and err.cause is not None:
        err = err.cause
    return f"{type(err).__name__}: {last_line(err)}"
