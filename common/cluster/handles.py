"""Typed handles on the roles: the driver calls ``generator.generate(requests, ...)``, ``ref.logps(seqs)``,
``reward.scores(seqs, eos_ids)``, ``actor.train(pairs, ...)``, ``actor.save(path)``.

A role's handle has one attribute per public method of its worker class (``common.cluster.workers``),
declared with that method's function object and how a call is spread over the role's ranks:

- ``sharded(W.f)``: ``f(items, ...)``: each data-parallel rank gets its contiguous slice of ``items``; the
  output ranks' results are concatenated in the order of ``items`` (``f`` returns one value per item);
  ``f.submit(items, ...)`` starts the same call without waiting (``.result()`` waits: staleness 1);
- ``per_dp(W.f)``: the same split; one result per data-parallel rank, in rank order;
- ``to_all(W.f)``: every rank gets the same arguments (collectives: save, restore, ...); one result per rank.

So no method name is a string in the driver's code: an editor goes from ``actor.save`` to its line
here, and from there to ``ActorWorker.save``; a type checker sees the worker's parameters. Ray stays
the transport: a call goes to the role's ``WorkerGroup`` (``common.cluster.worker_group``), which
sends the function's name to the role's part of each rank's process (``RankProcess.call``) and waits
watching every role (a lost worker fails the call in seconds). tests/test_role_handles.py checks that
each handle has exactly its worker's public methods.

The driver imports the worker classes for this: ``common.cluster.workers`` imports torch (the
driver does anyway) but not Megatron-core.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

from common.cluster.worker_group import Pending, WorkerGroup
from common.cluster.workers import ActorWorker, GeneratorWorker, ReferenceWorker, RewardWorker, RoleWorker
from common.train.sequences import split

P = ParamSpec("P")
R = TypeVar("R")


class _Dispatch(Generic[P, R]):
    """A handle's entry for one worker method: its function and (the subclass) how a call is spread."""

    def __init__(self, fn: Callable[Concatenate[Any, P], R]) -> None:
        self.fn, self.name = fn, fn.__name__
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        if name != self.name:
            raise TypeError(f"{owner.__name__}.{name} is declared with the worker's {self.name}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fn.__qualname__})"


class ShardedCall(Protocol[P, R]):
    """What ``handle.f`` is for a ``sharded`` method: call it, or ``submit`` it and wait later."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...
    def submit(self, *args: P.args, **kwargs: P.kwargs) -> PendingItems: ...


class sharded(_Dispatch[P, R]):
    """``f(items, *args)`` on each data-parallel rank's slice of ``items`` (its first argument);
    the output ranks' results concatenated in the order of ``items``."""

    @overload
    def __get__(self, handle: None, owner: type) -> sharded[P, R]: ...
    @overload
    def __get__(self, handle: RoleHandle, owner: type) -> ShardedCall[P, R]: ...
    def __get__(self, handle: RoleHandle | None, owner: type) -> Any:
        if handle is None:
            return self

        def call(items: list, *args: Any, **kwargs: Any) -> Any:  # R: the slices' lists, concatenated
            return handle.group.run_sharded(self.name, items, *args, **kwargs)

        def submit(items: list, *args: Any, **kwargs: Any) -> PendingItems:
            """The same call, not waited for: ``.result()`` gives what ``call`` returns."""
            pending = handle.group.submit_per_dp(self.name, split(items, handle.dp_size), *args, **kwargs)
            return PendingItems(pending.watch())

        call.submit = submit  # type: ignore[attr-defined]
        return call


class PendingItems:
    """A ``sharded`` call running while the driver goes on (``generator.generate.submit(...)``)."""

    def __init__(self, pending: Pending):
        self.pending = pending

    def result(self) -> list:
        """The output ranks' results concatenated in the order of the items, as the call returns them."""
        return [x for part in self.pending.result() for x in part]

    @property
    def started(self) -> float:
        return self.pending.started

    @property
    def seconds(self) -> float:
        """From the call to the last rank's answer (after ``result``; the answers' callbacks run on
        another thread and may come just after ``result`` returns: then it is now)."""
        return (self.pending.finished or time.perf_counter()) - self.pending.started


class per_dp(_Dispatch[P, R]):
    """``f(items, *args)`` on each data-parallel rank's slice of ``items`` (its first argument);
    one result per data-parallel rank, in rank order."""

    @overload
    def __get__(self, handle: None, owner: type) -> per_dp[P, R]: ...
    @overload
    def __get__(self, handle: RoleHandle, owner: type) -> Callable[P, list[R]]: ...
    def __get__(self, handle: RoleHandle | None, owner: type) -> Any:
        if handle is None:
            return self

        def call(items: list, *args: Any, **kwargs: Any) -> list[R]:
            return handle.group.run_per_dp(self.name, split(items, handle.group.dp_size), *args, **kwargs)

        return call


class to_all(_Dispatch[P, R]):
    """``f(*args)`` on every rank of the role, same arguments; one result per rank."""

    @overload
    def __get__(self, handle: None, owner: type) -> to_all[P, R]: ...
    @overload
    def __get__(self, handle: RoleHandle, owner: type) -> Callable[P, list[R]]: ...
    def __get__(self, handle: RoleHandle | None, owner: type) -> Any:
        if handle is None:
            return self

        def call(*args: Any, **kwargs: Any) -> list[R]:
            return handle.group.call_all(self.name, *args, **kwargs)

        return call


class RoleHandle:
    """One role's ranks, called through its worker's methods (declared by the subclasses)."""

    worker: ClassVar[type[RoleWorker]]  # the class whose public methods this handle has

    def __init__(self, group: WorkerGroup):
        self.group = group  # the role's processes (restarts keep the group, so the handle stays valid)

    @property
    def dp_size(self) -> int:
        return self.group.dp_size


class ActorHandle(RoleHandle):
    """The actor's training ranks (and generating ranks, without dedicated ones)."""

    worker = ActorWorker
    generate = sharded(ActorWorker.generate)
    export_shards = to_all(ActorWorker.export_shards)
    train = per_dp(ActorWorker.train)
    save_weights = to_all(ActorWorker.save_weights)
    save = to_all(ActorWorker.save)
    restore = to_all(ActorWorker.restore)


class GeneratorHandle(RoleHandle):
    """Dedicated generating ranks (``actor_rollout.generate_devices > 0``)."""

    worker = GeneratorWorker
    load_weights = to_all(GeneratorWorker.load_weights)
    generate = sharded(GeneratorWorker.generate)


class ReferenceHandle(RoleHandle):
    worker = ReferenceWorker
    logps = sharded(ReferenceWorker.logps)


class RewardHandle(RoleHandle):
    worker = RewardWorker
    scores = sharded(RewardWorker.scores)


HANDLE_CLASSES: dict[str, type[RoleHandle]] = {
    "actor_rollout": ActorHandle,
    "rollout": GeneratorHandle,
    "ref": ReferenceHandle,
    "reward": RewardHandle,
}


@dataclass(frozen=True)
class RoleHandles:
    """A run's roles, each through its handle (``Session.handles``)."""

    actor: ActorHandle
    rollout: GeneratorHandle | None  # dedicated generating ranks, if any
    ref: ReferenceHandle
    reward: RewardHandle | None  # None when reward functions replace the model

    @classmethod
    def of(cls, groups: dict[str, WorkerGroup]) -> RoleHandles:
        return cls(
            actor=ActorHandle(groups["actor_rollout"]),
            rollout=GeneratorHandle(groups["rollout"]) if "rollout" in groups else None,
            ref=ReferenceHandle(groups["ref"]),
            reward=RewardHandle(groups["reward"]) if "reward" in groups else None,
        )
