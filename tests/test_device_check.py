"""bench/device_check.py at toy scale on CPU: the engine's pieces (generation, reward, reference,
one DPO step with Megatron's optimizer, checkpoint save + load) in one process, without Ray, with
its own checks (reward scores of the workers' path equal to the full forward's, step-1 loss ln 2,
repeated forward equal, finite loss after the step, checkpoint round trip). The same script runs at llama32_1b size in bf16 on a GPU (bench/device_check.sh)."""

import json
import math
import subprocess
import sys

from conftest import ROOT


def test_device_check_toy_cpu(tmp_path):
    out = tmp_path / "device_check.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "device_check.py"), "--device", "cpu", "--scale", "toy", "--threads", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["ok"] and all(c["ok"] for c in r["checks"].values())
    assert abs(r["checks"]["step1_loss_ln2"]["value"] - math.log(2)) < 1e-4
    assert r["checks"]["loss_after_step_finite"]["value"] < math.log(2)  # lr 1e-3 (cpu_scale): one step lowers it
    assert r["environment"]["ray_imported"] is False
    assert r["workload"]["prompts"] * r["workload"]["samples_per_prompt"] == r["generation"]["rows"] == 16
    assert r["generation"]["generated_tokens"] > 0 and r["generation"]["tokens_per_s"] > 0
    # the workers' reward path (each prompt once, last layer at the score positions) = the full forward
    assert r["checks"]["reward_shared_equals_full"]["max_abs_diff"] <= 1e-4
    for phase in ("build", "generate", "reward", "reward_full", "reference", "reference2", "optimizer", "train", "after", "save", "load"):
        assert r["phases"][phase]["seconds"] >= 0
    assert r["phases"]["train"]["mfu"] > 0  # against a measured fp32 matmul peak (noisy on a shared CPU: no upper bound)
    assert r["peak_memory"] > 0
    assert r["memory_per_role"] is None  # CPU: no allocator counter; accelerators report bytes per role
    assert r["optimizer"]["classes"] == ["FP32Optimizer"] and r["optimizer"]["fused_adam"] is True
    assert "mixed_precision_main_params" not in r["checks"]  # fp32 weights: no main copies


def test_device_check_bf16_mixed_precision_on_cpu(tmp_path):
    """The check in bf16, as on a GPU, run on CPU (tests/_device_check_bf16_cpu.py answers Megatron's
    CUDA-only type checks): Megatron's Float16OptimizerWithFloat16Params trains bf16 weights through
    fp32 main parameters, and every check passes at its bf16 tolerance."""
    out = tmp_path / "device_check_bf16.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_device_check_bf16_cpu.py"), "--device", "cpu", "--scale", "toy", "--threads", "2",
         "--peak-tflops", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["workload"]["dtype"] == "bf16" and r["ok"]
    assert r["optimizer"]["classes"] == ["Float16OptimizerWithFloat16Params"] and r["optimizer"]["fused_adam"] is True
    # Adam steps fp32 main copies of every weight, and the bf16 weights are those rounded
    mixed = r["checks"]["mixed_precision_main_params"]
    assert mixed["ok"] and mixed["params_equal_rounded_main"] and mixed["fp32_main_params"] == mixed["adam_params"] > 0
    assert r["checks"]["step1_loss_ln2"]["tolerance"] == 1e-2 and abs(r["checks"]["step1_loss_ln2"]["value"] - math.log(2)) < 1e-2
    assert r["checks"]["loss_after_step_finite"]["value"] < math.log(2)
    assert r["checks"]["checkpoint_roundtrip"]["bytes"] < 2.1 * r["workload"]["params"]["actor"]  # saved in bf16


def test_recipe_budget_takes_a_measured_report(tmp_path, capsys):
    """The budget's "measured by device_check" column: empty without a report, filled from a
    full-scale report's per-role bytes (a hand-made report here: none has been recorded), and a
    toy-scale report is refused."""
    import pytest

    from tools import recipe_budget

    recipe_budget.main(["llama32_1b"])
    assert "| actor_rollout | 31.92 GiB | 50% | 40% | not measured yet |" in capsys.readouterr().out
    report = {
        "tool": "bench/device_check.py", "git": {"commit": "abc"}, "device": {"kind": "cuda", "name": "stand-in GPU"},
        "workload": {"recipe": "llama32_1b", "scale": "full", "dtype": "bf16", "prompts": 8, "samples_per_prompt": 2,
                     "micro_batch_pairs": 4, "fusions": {}},
        "memory_per_role": {"actor_rollout": 30 * 2**30, "rollout": 3 * 2**30, "ref": 5 * 2**30, "reward": 3 * 2**30},
    }  # fmt: skip
    path = tmp_path / "measured.json"
    path.write_text(json.dumps(report))
    recipe_budget.main(["llama32_1b", "--measured", str(path)])
    out = capsys.readouterr().out
    assert "| actor_rollout | 31.92 GiB | 50% | 40% | 30.00 GiB |" in out and "stand-in GPU" in out
    report["workload"]["scale"] = "toy"
    path.write_text(json.dumps(report))
    with pytest.raises(SystemExit, match="toy-scale"):
        recipe_budget.main(["llama32_1b", "--measured", str(path)])
