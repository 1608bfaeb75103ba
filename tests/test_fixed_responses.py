"""fixed_responses: stored responses replace generation, checked before Ray starts."""

import pytest
from conftest import ROOT, run_recipe

from common.prompts.dataset import read_prompts
from common.prompts.messages import prompt_text
from common.run.outputs import read_jsonl
from common.util import jsonl

PROMPTS = ROOT / "data" / "prompts" / "tiny_prompts.jsonl"


def write_fixed(path, per_prompt=2, skip_last=False):
    prompts = [prompt_text(p) for p in read_prompts(str(PROMPTS))]
    if skip_last:
        prompts = prompts[:-1]
    jsonl.write(
        path,
        (
            {"prompt": p, "responses": [f"Answer {j} to prompt {i}: sure, here it is." for j in range(per_prompt)]}
            for i, p in enumerate(prompts)
        ),
    )
    return prompts


@pytest.mark.slow
def test_stored_responses_replace_generation(tmp_path):
    fixed = tmp_path / "fixed.jsonl"
    prompts = write_fixed(fixed)
    out = tmp_path / "run"
    proc = run_recipe("tiny", out, f"actor_rollout_ref.actor_rollout.fixed_responses={fixed}", "training.train_iters=2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = read_jsonl(out / "rollouts.jsonl")
    assert len(rows) == 16
    for r in rows:
        i = prompts.index(r["prompt"])
        assert r["responses"] == [f"Answer {j} to prompt {i}: sure, here it is." for j in range(2)]
    metrics = read_jsonl(out / "metrics.jsonl")
    assert all(m["val/contain_eos_token"] == 1.0 for m in metrics)  # each stored response ends in EOS


def test_missing_prompt_fails_before_ray(tmp_path):
    fixed = tmp_path / "fixed.jsonl"
    write_fixed(fixed, skip_last=True)
    proc = run_recipe("tiny", tmp_path / "run", f"actor_rollout_ref.actor_rollout.fixed_responses={fixed}")
    assert proc.returncode != 0
    assert "no responses for prompt 64" in proc.stderr
    assert not (tmp_path / "run").exists()  # stopped before the run folder, so before Ray


def test_wrong_count_fails_before_ray(tmp_path):
    fixed = tmp_path / "fixed.jsonl"
    write_fixed(fixed, per_prompt=3)
    proc = run_recipe("tiny", tmp_path / "run", f"actor_rollout_ref.actor_rollout.fixed_responses={fixed}")
    assert proc.returncode != 0 and "has 3 responses but n_samples_per_prompt=2" in proc.stderr
