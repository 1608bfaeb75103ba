"""bench/device_check.py at toy scale on CPU: the engine's pieces (generation, reward, reference,
one DPO step with Megatron's optimizer, checkpoint save + load) in one process, without Ray, with
its own checks (reward scores of the workers' path equal to the full forward's, step-1 loss ln 2,
repeated forward equal, finite loss after the step, checkpoint round trip), in fp32 and, as on a
GPU, in bf16 and fp16. The same script runs at llama32_1b size in bf16 on a GPU (bench/device_check.sh)."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT


def _device_check(script: Path, out: Path, *extra: str, env: dict | None = None) -> dict:
    """The script's report, and under ``test_wall_seconds`` how long its process ran, as timed here."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script), "--device", "cpu", "--scale", "toy", "--threads", "2", *extra, "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=out.parent, env={**os.environ, **(env or {})},
    )  # fmt: skip
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {**json.loads(out.read_text()), "test_wall_seconds": wall}


@pytest.fixture(scope="module")
def fp32_report(tmp_path_factory) -> dict:
    return _device_check(ROOT / "bench" / "device_check.py", tmp_path_factory.mktemp("fp32") / "device_check.json")


def test_device_check_toy_cpu(fp32_report):
    r = fp32_report
    assert r["ok"] and all(c["ok"] for c in r["checks"].values())
    assert abs(r["checks"]["step1_loss_ln2"]["value"] - math.log(2)) < 1e-4
    assert r["checks"]["loss_after_step_finite"]["value"] < math.log(2)  # lr 1e-3 (cpu_scale): one step lowers it
    assert r["environment"]["ray_imported"] is False
    assert r["workload"]["prompts"] * r["workload"]["samples_per_prompt"] == r["generation"]["rows"] == 16
    assert r["generation"]["generated_tokens"] > 0 and r["generation"]["tokens_per_s"] > 0
    # the workers' reward path (each prompt once, last layer at the score positions) = the full forward
    assert r["checks"]["reward_shared_equals_full"]["max_abs_diff"] <= 1e-4
    phases = r["phases"]
    assert list(phases) == [
        "build", "warmup", "generate", "reward", "reward_full", "reference", "reference2", "optimizer",
        "train", "train2", "after", "save", "load",
    ]  # fmt: skip
    # every phase does work (timed to 0.1 ms), one after another inside the script's process
    assert all(p["seconds"] > 0 for p in phases.values()), phases
    assert sum(p["seconds"] for p in phases.values()) < r["test_wall_seconds"]
    # the rates are the phases' own numbers
    generate_s = phases["generate"]["seconds"]
    assert r["generation"]["tokens_per_s"] == pytest.approx(r["generation"]["generated_tokens"] / generate_s, abs=0.01)
    timed = [p for p in phases.values() if "flops" in p]
    assert {n for n, p in phases.items() if "flops" in p} >= {"generate", "reference", "train", "train2", "after"}
    for p in timed:
        assert p["tflop_per_s"] == pytest.approx(p["flops"] / p["seconds"] / 1e12, rel=1e-3, abs=1e-4), p
    overall = sum(p["flops"] for p in timed) / sum(p["seconds"] for p in timed) / r["device"]["peak_flops"]
    assert r["mfu_overall"] == pytest.approx(overall, rel=1e-3, abs=1e-5)
    # against a measured fp32 matmul peak (noisy on a shared CPU: no upper bound)
    assert phases["train"]["mfu"] > 0
    assert r["peak_memory"] > 0
    assert r["memory_per_role"] is None  # CPU: no allocator counter; accelerators report bytes per role
    assert r["optimizer"]["classes"] == ["FP32Optimizer"] and r["optimizer"]["fused_adam"] is True
    assert "mixed_precision_main_params" not in r["checks"]  # fp32 weights: no main copies


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_device_check_half_precision_on_cpu(tmp_path, fp32_report, dtype):
    """The check in bf16 (the recipes' dtype on a GPU) and fp16, run on CPU (tests/_half_precision_on_cpu.py
    answers Megatron's CUDA-only type checks): Megatron's Float16OptimizerWithFloat16Params trains
    the half-precision weights through fp32 main parameters, every check passes at its tolerance,
    and the gradient norm is the fp32 run's (in fp16: the schedules scaled the loss by the
    optimizer's loss scale, 2^16, and the optimizer unscaled the gradients)."""
    r = _device_check(
        ROOT / "tests" / "_device_check_half_precision.py",
        tmp_path / "device_check.json",
        "--peak-tflops",
        "1",
        env={"ODPO_DTYPE": dtype},
    )
    assert r["workload"]["dtype"] == dtype and r["ok"]
    assert r["optimizer"]["classes"] == ["Float16OptimizerWithFloat16Params"] and r["optimizer"]["fused_adam"] is True
    assert r["optimizer"]["loss_scale"] == (2.0**16 if dtype == "fp16" else 1.0)
    norm, fp32_norm = r["checks"]["grad_norm_finite"]["value"], fp32_report["checks"]["grad_norm_finite"]["value"]
    assert abs(norm - fp32_norm) < 0.02 * fp32_norm, (norm, fp32_norm)
    # Adam steps fp32 main copies of every weight, and the half-precision weights are those rounded
    mixed = r["checks"]["mixed_precision_main_params"]
    assert mixed["ok"] and mixed["params_equal_rounded_main"] and mixed["fp32_main_params"] == mixed["adam_params"] > 0
    assert (
        r["checks"]["step1_loss_ln2"]["tolerance"] == 1e-2
        and abs(r["checks"]["step1_loss_ln2"]["value"] - math.log(2)) < 1e-2
    )
    assert r["checks"]["loss_after_step_finite"]["value"] < math.log(2)
    assert (
        r["checks"]["checkpoint_roundtrip"]["bytes"] < 2.1 * r["workload"]["params"]["actor"]
    )  # saved in half precision


def test_recipe_budget_takes_a_measured_report(tmp_path, capsys):
    """The budget's "measured by device_check" column: empty without a report, filled from a
    full-scale report's per-role bytes (the H200 run recorded in docs/device/, and a hand-made
    report with a second DPO step), and a toy-scale report is refused."""
    from tools import recipe_budget

    recipe_budget.main(["llama32_1b"])
    assert "| actor_rollout | 31.92 GiB | 50% | 40% | not measured yet |" in capsys.readouterr().out
    recorded = ROOT / "docs" / "device" / "h200" / "device_check.json"
    actor = json.loads(recorded.read_text())["memory_per_role"]["actor_rollout"]
    recipe_budget.main(["llama32_1b", "--measured", str(recorded)])
    out = capsys.readouterr().out
    assert f"| actor_rollout | 31.92 GiB | 50% | 40% | {actor / 2**30:.2f} GiB |" in out and "NVIDIA H200" in out
    assert "ran one DPO step only" in out  # that run had no train2 phase
    report = {
        "tool": "bench/device_check.py", "git": {"commit": "abc"}, "device": {"kind": "cuda", "name": "stand-in GPU"},
        "workload": {"recipe": "llama32_1b", "scale": "full", "dtype": "bf16", "prompts": 8, "samples_per_prompt": 2,
                     "micro_batch_pairs": 4, "fusions": {}},
        "memory_per_role": {"actor_rollout": 30 * 2**30, "rollout": 3 * 2**30, "ref": 5 * 2**30, "reward": 3 * 2**30},
        "phases": {"train": {}, "train2": {}},
    }  # fmt: skip
    path = tmp_path / "measured.json"
    path.write_text(json.dumps(report))
    recipe_budget.main(["llama32_1b", "--measured", str(path)])
    out = capsys.readouterr().out
    assert "| actor_rollout | 31.92 GiB | 50% | 40% | 30.00 GiB |" in out and "stand-in GPU" in out
    assert "ran one DPO step only" not in out
    report["workload"]["scale"] = "toy"
    path.write_text(json.dumps(report))
    with pytest.raises(SystemExit, match="toy-scale"):
        recipe_budget.main(["llama32_1b", "--measured", str(path)])


def test_decode_profile_compares_the_fixed_shape_decode_with_eager(tmp_path):
    """bench/decode_profile.py on CPU at toy scale, the fixed-shape decode (what a CUDA graph
    replays) against eager: times for every variant, and the same tokens in every row."""
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "decode_profile.py"), "--device", "cpu", "--scale", "toy", "--decode", "static",
         "--profile-steps", "2", "--out", str(tmp_path)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["decode"] == "static" and summary["rows"] == 16
    assert set(summary["ms_per_step"]) == {"sampled", "sampled_eager", "sampled_eager_again", "greedy", "greedy_eager"}
    assert all(ms > 0 for ms in summary["ms_per_step"].values())
    assert summary["rows_equal_eager"] == {"sampled": 16, "greedy": 16, "greedy_fp32": 16}
    assert (tmp_path / "profile.txt").stat().st_size > 0
