"""Placement: a plan decided before workers start, and Ray honouring it on a simulated cluster."""

import json
import os
import subprocess

import pytest
from conftest import ROOT

from common.cluster.placement import Node, plan_placement


def nodes(*devices):
    return [Node(f"id{i}", f"10.0.0.{i}", d, 8) for i, d in enumerate(devices)]


def test_roles_fill_nodes_in_declared_order():
    plan = plan_placement({"actor_rollout": 8, "ref": 4, "reward": 4}, nodes(8, 8), "NPU")
    assert [n.node_id for n in plan["actor_rollout"]] == ["id0"] * 8
    assert [n.node_id for n in plan["ref"]] == ["id1"] * 4
    assert [n.node_id for n in plan["reward"]] == ["id1"] * 4


def test_shortfall_names_the_need_and_the_gap():
    with pytest.raises(
        ValueError,
        match=r"need 16 NPU slots \(actor_rollout 8, ref 4, reward 4\).*have 12; short by 4 \(role reward gets 0 of its 4\)",
    ):
        plan_placement({"actor_rollout": 8, "ref": 4, "reward": 4}, nodes(8, 4), "NPU")


def test_cpu_ranks_spread_evenly_without_a_device_resource():
    plan = plan_placement({"actor_rollout": 2, "ref": 1, "reward": 1}, nodes(2, 2), None)
    assert [n.node_id for n in plan["actor_rollout"]] == ["id0", "id0"]
    assert [n.node_id for n in plan["ref"] + plan["reward"]] == ["id1", "id1"]


@pytest.fixture
def two_node_cluster():
    from tools.simulated_cluster import cluster_process

    with cluster_process(nodes=2, cpus=1, npus=2) as address:
        yield address


@pytest.mark.slow
def test_tiny_across_two_simulated_nodes_lands_where_planned(two_node_cluster, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "RAY_ADDRESS": two_node_cluster}
    proc = subprocess.run(
        [
            str(ROOT / "run.sh"),
            "tiny",
            "--nodes",
            "2",
            "--out",
            str(out),
            "resource_pool.device_resource=NPU",
            "training.train_iters=2",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    record = json.loads((out / "placement.json").read_text())
    roles = record["roles"]
    # the plan: actor's 2 ranks fill node 0 (2 NPUs), ref and reward share node 1
    assert [r["planned_node"] for r in roles["actor_rollout"]] == [0, 0]
    assert [r["planned_node"] for r in roles["ref"] + roles["reward"]] == [1, 1]
    for ranks in roles.values():
        assert all(r["node"] == r["planned_node"] for r in ranks)
        assert all(r["process_title"].startswith("ray::") and r["pid"] > 0 for r in ranks)
    assert len({n["node_id"] for n in record["nodes"]}) == 2


ONE_RANK = ("resource_pool.actor_rollout=1", "actor_rollout_ref.actor_rollout.tensor_model_parallel_size=1")
TP2_ROLES = (
    "actor_rollout_ref.ref.tensor_model_parallel_size=2",
    "resource_pool.ref=2",
    "reward.tensor_model_parallel_size=2",
    "resource_pool.reward=2",
)


@pytest.mark.slow
@pytest.mark.parametrize("layout, ranks", [(ONE_RANK, 1), (TP2_ROLES, 2)], ids=["tp1", "tp2"])
def test_colocated_ref_and_reward_compute_what_their_own_processes_do(tmp_path, layout, ranks):
    """``resource_pool.colocate=[ref,reward]``: the reference and reward model in the actor's
    process(es) give the same numbers as in processes of their own, bit for bit (same layouts, same
    threads), with every role on one rank (TP 1) and on two (TP 2: each of the actor's two processes
    holds a TP shard of all three models)."""
    from conftest import run_recipe

    from common.run.outputs import read_jsonl

    runs = {}
    for name, extra in (("own", ()), ("colocated", ("resource_pool.colocate=[ref,reward]",))):
        proc = run_recipe("tiny", tmp_path / name, "training.train_iters=2", *layout, *extra)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        runs[name] = tmp_path / name
    roles = {name: json.loads((out / "placement.json").read_text())["roles"] for name, out in runs.items()}
    assert [r.get("process_of") for r in roles["colocated"]["ref"] + roles["colocated"]["reward"]] == [
        "actor_rollout"
    ] * 2 * ranks
    assert all("process_of" not in r for ranks in roles["own"].values() for r in ranks)
    # each rank's process, as ps shows it: colocated roles are in the actor's processes, the others in their own
    titles = {
        "actor_rollout": "ray::ActorRolloutProcess",
        "ref": "ray::ReferenceProcess",
        "reward": "ray::RewardProcess",
    }
    own, colocated = roles["own"], roles["colocated"]
    assert {role: {r["process_title"] for r in own[role]} for role in titles} == {r: {t} for r, t in titles.items()}
    assert all(r["process_title"] == titles["actor_rollout"] for ranks in colocated.values() for r in ranks)
    assert all(isinstance(r["pid"], int) and r["pid"] > 0 for run in roles.values() for rs in run.values() for r in rs)
    assert len({r["pid"] for ranks in own.values() for r in ranks}) == 3 * ranks  # one process per rank of each role
    actor_pids = [r["pid"] for r in colocated["actor_rollout"]]
    assert len(set(actor_pids)) == ranks
    assert [r["pid"] for r in colocated["ref"]] == [r["pid"] for r in colocated["reward"]] == actor_pids
    # each rank's start: its process's import and world (shared by the roles a process holds), its role's model
    for run in roles.values():
        assert all(set(r["startup_s"]) == {"import_s", "world_s", "build_s"} for rs in run.values() for r in rs)
    process_part = [{k: r["startup_s"][k] for k in ("import_s", "world_s")} for r in colocated["actor_rollout"]]
    assert [{k: r["startup_s"][k] for k in ("import_s", "world_s")} for r in colocated["ref"]] == process_part
    assert [{k: r["startup_s"][k] for k in ("import_s", "world_s")} for r in colocated["reward"]] == process_part

    def numbers(out):
        return [
            {k: v for k, v in row.items() if not k.startswith("timing/")} for row in read_jsonl(out / "metrics.jsonl")
        ]

    assert numbers(runs["colocated"]) == numbers(runs["own"])
    assert read_jsonl(runs["colocated"] / "rollouts.jsonl") == read_jsonl(runs["own"] / "rollouts.jsonl")
