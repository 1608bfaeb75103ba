"""One step off-policy (``actor_rollout.staleness=1``, issue 27): the generating ranks sample
iteration k+1's responses while the actor takes step k. Every row names the policy that sampled it;
a run is repeatable bit for bit, and a run killed with a batch in flight resumes to exactly the rows
of one that never stopped (the checkpoint holds the responses in flight)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_recipe, run_recipe_killed

from common.config.load import load_config
from common.run.expected_curve import compare, load_expected
from common.run.outputs import read_jsonl

TINY = ROOT / "recipes" / "tiny" / "config.yaml"
GENERATORS = (  # the tiny recipe with one dedicated generating rank (TP 1) beside its TP 2 actor
    "resource_pool.actor_rollout=3",
    "actor_rollout_ref.actor_rollout.generate_devices=1",
    "actor_rollout_ref.actor_rollout.generate_tensor_model_parallel_size=1",
)
SETTINGS = (*GENERATORS, "actor_rollout_ref.actor_rollout.staleness=1", "training.train_iters=6",
            "training.save_interval=2")  # fmt: skip


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in rows]


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["actor_rollout_ref.actor_rollout.staleness=2"], "staleness=2: use 0 (generate, then train) or 1"),
        (["actor_rollout_ref.actor_rollout.staleness=1"], "needs dedicated generating ranks to overlap with training: "
         "set actor_rollout_ref.actor_rollout.generate_devices=K"),
        ([*GENERATORS, "actor_rollout_ref.actor_rollout.staleness=1",
          "actor_rollout_ref.actor_rollout.fixed_responses=x.jsonl"], "with fixed_responses: stored responses are not"),
    ],
)  # fmt: skip
def test_refused_before_anything_starts(overrides, fragment):
    with pytest.raises(ValueError, match="staleness") as e:
        load_config(TINY, overrides)
    assert fragment in str(e.value)


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("staleness") / "whole"
    proc = run_recipe("tiny", out, *SETTINGS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


@pytest.mark.slow
def test_every_row_names_the_policy_that_sampled_it(whole):
    rows = read_jsonl(whole / "metrics.jsonl")
    assert [r["rollout/policy_step"] for r in rows] == [0, 0, 1, 2, 3, 4]  # step - 2, never below 0
    assert [r["rollout/policy_step"] for r in read_jsonl(whole / "rollouts.jsonl")] == [
        p for p in [0, 0, 1, 2, 3, 4] for _ in range(8)
    ]
    # iteration 1 samples before it trains; every later one takes what was sampled meanwhile
    assert "timing/wait_generate" not in rows[0] and all("timing/wait_generate" in r for r in rows[1:])
    assert all(r["timing/generate"] > 0 for r in rows)
    state = (whole / "checkpoints" / "iter_000004" / "driver.json").read_text()
    assert '"in_flight"' in state and '"policy_step": 3' in state  # iteration 5's responses, by the policy after step 3


@pytest.mark.slow
def test_killed_with_a_batch_in_flight_then_resumed_writes_the_same_rows(whole, tmp_path):
    """SIGKILL after iteration 5 is logged (iteration 6's responses in flight, checkpoint 4 holding
    iteration 5's); ``--resume`` gives the rows of the run that never stopped, bit for bit, which
    also shows that two runs of the same config agree exactly."""
    broken = tmp_path / "broken"
    run_recipe_killed("tiny", broken, 5, *SETTINGS)
    assert (broken / "checkpoints" / "latest").read_text().strip() == "iter_000004"
    before = read_jsonl(broken / "metrics.jsonl")
    assert comparable(before) == comparable(read_jsonl(whole / "metrics.jsonl"))[: len(before)]

    resumed = subprocess.run(
        [str(ROOT / "run.sh"), "tiny", "--resume", str(broken)], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert comparable(read_jsonl(broken / "metrics.jsonl")) == comparable(read_jsonl(whole / "metrics.jsonl"))
    assert read_jsonl(broken / "rollouts.jsonl") == read_jsonl(whole / "rollouts.jsonl")
    rows = read_jsonl(broken / "metrics.jsonl")
    assert rows[4]["timing/generate"] == 0.0  # iteration 5's responses came from the checkpoint
    # the timeline was cut back to the checkpoint as well: every iteration's span once (5 was logged twice)
    spans = [s["step"] for s in read_jsonl(broken / "timeline.jsonl") if s["phase"] == "step"]
    assert spans == list(range(1, len(rows) + 1))


@pytest.mark.curve
@pytest.mark.slow
def test_the_recipe_one_step_off_policy_matches_its_stored_curve(tmp_path):
    """``./run.sh tiny --overlay staleness1``, all 30 iterations, against the curve
    ``tools.record_curve`` recorded (CI checks it natively and under the scalar kernels)."""
    expected = load_expected(ROOT / "recipes" / "tiny", "staleness1")
    assert expected is not None, "recipes/tiny/expected_loss.staleness1.json missing: run tools.record_curve"
    proc = run_recipe("tiny", tmp_path / "run", "--overlay", "staleness1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["rollout/policy_step"] for r in rows] == [max(0, r["step"] - 2) for r in rows]
    problems = compare(expected, [r["loss"] for r in rows])
    assert not problems, "\n".join(problems)
    # not the on-policy curve: from iteration 2 on, the responses come from a policy one step older
    on_policy = load_expected(ROOT / "recipes" / "tiny")["loss"]
    assert expected["loss"][0] == pytest.approx(on_policy[0], abs=1e-6)
    assert compare({**expected, "loss": on_policy}, expected["loss"])


@pytest.mark.slow
def test_the_timeline_shows_sampling_overlapping_training(whole, tmp_path):
    """``timeline.jsonl``: iteration k+1's sampling (generating ranks) starts before iteration k's
    training ends; ``tools.plot_timeline`` draws it."""
    spans = read_jsonl(whole / "timeline.jsonl")
    at = {(s["step"], s["lane"], s["phase"]): s for s in spans}
    for step in range(2, 7):
        sampling = at[(step, "generating ranks", "generate")]
        training = at[(step - 1, "driver", "train")]
        assert sampling["start"] < training["start"] + training["seconds"], (step, sampling, training)
    assert (1, "driver", "generate") in at  # iteration 1 samples before it trains
    proc = subprocess.run(
        [sys.executable, "-m", "tools.plot_timeline", str(whole), "--steps", "2-6", "--out", str(tmp_path / "t.png")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "t.png").stat().st_size > 10_000
