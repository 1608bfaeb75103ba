"""Role handles (common/cluster/handles.py): each has exactly its worker's public methods, each entry
names that worker's own function, and a call is spread over the ranks as before (sharded by
data-parallel rank and gathered, or sent to every rank). No Ray: a stand-in group records the calls."""

import inspect
import subprocess
import sys

import pytest
from conftest import ROOT

from common.cluster.handles import (
    HANDLE_CLASSES,
    ActorHandle,
    GeneratorHandle,
    ReferenceHandle,
    RewardHandle,
    RoleHandle,
    RoleHandles,
    _Dispatch,
    per_dp,
    sharded,
    to_all,
)
from common.cluster.workers import WORKER_CLASSES, ActorWorker, RoleWorker
from common.train.sequences import split

# RoleWorker's public methods: the set-up RankProcess drives itself (never the driver, so no handle has them)
SET_UP = {"master_address", "init_distributed", "layout", "build"}

# how each call is spread over a role's ranks, as the driver called them by name before the handles
DISPATCH = {
    "actor_rollout": {
        "generate": sharded,
        "export_shards": to_all,
        "train": per_dp,
        "save_weights": to_all,
        "save": to_all,
        "restore": to_all,
    },
    "rollout": {"load_weights": to_all, "generate": sharded},
    "ref": {"logps": sharded},
    "reward": {"scores": sharded},
}


def public_methods(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_") and callable(inspect.getattr_static(cls, n))}


def mismatches(handle: type[RoleHandle], worker: type) -> list[str]:
    """What keeps ``handle`` from having exactly ``worker``'s public methods (empty: nothing)."""
    wanted = public_methods(worker) - SET_UP
    entries = {n: inspect.getattr_static(handle, n) for n in dir(handle) if not n.startswith("_")}
    entries = {n: e for n, e in entries.items() if n not in vars(RoleHandle) and n != "worker"}
    problems = [f"{n}: not a handle entry ({e!r})" for n, e in entries.items() if not isinstance(e, _Dispatch)]
    problems += [f"{n}: the worker's method has no handle entry" for n in sorted(wanted - set(entries))]
    problems += [f"{n}: the worker has no such public method" for n in sorted(set(entries) - wanted)]
    problems += [
        f"{n}: declared with {e.fn.__qualname__}, not {worker.__name__}'s"
        for n, e in entries.items()
        if n in wanted and isinstance(e, _Dispatch) and e.fn is not inspect.getattr_static(worker, n)
    ]
    return problems


def test_role_worker_public_methods_are_the_set_up():
    assert public_methods(RoleWorker) == SET_UP


@pytest.mark.parametrize("role", sorted(WORKER_CLASSES))
def test_each_handle_has_exactly_its_workers_public_methods(role):
    handle, worker = HANDLE_CLASSES[role], WORKER_CLASSES[role]
    assert handle.worker is worker
    assert mismatches(handle, worker) == []
    kinds = {n: type(inspect.getattr_static(handle, n)) for n in public_methods(worker) - SET_UP}
    assert kinds == DISPATCH[role]


def test_every_role_has_a_handle():
    assert HANDLE_CLASSES.keys() == WORKER_CLASSES.keys()


def test_the_check_fails_on_a_method_without_an_entry_and_on_a_wrong_function():
    class MoreWorker(ActorWorker):
        def evaluate(self, seqs: list) -> list[float]:
            return []

    assert mismatches(ActorHandle, MoreWorker) == ["evaluate: the worker's method has no handle entry"]

    class WrongHandle(ActorHandle):
        logps = sharded(WORKER_CLASSES["ref"].logps)  # a method of another role's worker

    assert mismatches(WrongHandle, ActorWorker) == ["logps: the worker has no such public method"]


def test_an_entry_named_unlike_its_function_is_refused():
    with pytest.raises((TypeError, RuntimeError)):  # RuntimeError wraps it before Python 3.12

        class Swapped(RoleHandle):
            save = to_all(ActorWorker.restore)


class Group:
    """Stand-in for a WorkerGroup: records what a handle asks of it."""

    dp_size = 2

    def __init__(self):
        self.calls = []

    def call_all(self, method, *args):
        self.calls.append(("call_all", method, *args))
        return ["rank0", "rank1", "rank2", "rank3"]

    def run_sharded(self, method, items, *args):
        self.calls.append(("run_sharded", method, items, *args))
        return list(items)

    def run_per_dp(self, method, shards, *args):
        self.calls.append(("run_per_dp", method, shards, *args))
        return [f"dp{d}" for d in range(len(shards))]


def test_calls_reach_the_group_as_before():
    actor, gen, ref, reward = Group(), Group(), Group(), Group()
    roles = RoleHandles.of({"actor_rollout": actor, "rollout": gen, "ref": ref, "reward": reward})
    assert isinstance(roles.actor, ActorHandle) and isinstance(roles.rollout, GeneratorHandle)
    assert isinstance(roles.ref, ReferenceHandle) and isinstance(roles.reward, RewardHandle)

    requests = [([1, 2], [7, 8]), ([3], [9, 10]), ([4], [11, 12])]
    assert roles.actor.generate(requests, 16, [0]) == requests
    assert roles.rollout.generate(requests, 16, [0]) == requests
    assert roles.ref.logps(["a", "b", "c"]) == ["a", "b", "c"]
    assert roles.reward.scores(["a", "b"], [0]) == ["a", "b"]
    pairs = [{"p": i} for i in range(4)]
    assert roles.actor.train(pairs, 2) == ["dp0", "dp1"]
    assert roles.actor.save("/ckpt") == ["rank0", "rank1", "rank2", "rank3"]
    roles.actor.restore("/ckpt")
    roles.actor.save_weights("/final")
    roles.rollout.load_weights(roles.actor.export_shards())

    assert actor.calls == [
        ("run_sharded", "generate", requests, 16, [0]),
        ("run_per_dp", "train", split(pairs, 2), 2),
        ("call_all", "save", "/ckpt"),
        ("call_all", "restore", "/ckpt"),
        ("call_all", "save_weights", "/final"),
        ("call_all", "export_shards"),
    ]
    assert gen.calls == [
        ("run_sharded", "generate", requests, 16, [0]),
        ("call_all", "load_weights", ["rank0", "rank1", "rank2", "rank3"]),
    ]
    assert ref.calls == [("run_sharded", "logps", ["a", "b", "c"])]
    assert reward.calls == [("run_sharded", "scores", ["a", "b"], [0])]


def test_optional_roles_are_none():
    roles = RoleHandles.of({"actor_rollout": Group(), "ref": Group()})
    assert roles.rollout is None and roles.reward is None


def test_the_driver_imports_no_megatron():
    """The handles name the workers' functions, so the driver imports common.cluster.workers: that
    module must not import Megatron-core (the rank processes do, at start-up)."""
    probe = "import sys, common.run.session; print(any(m.split('.')[0] == 'megatron' for m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"
