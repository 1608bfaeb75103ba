"""bench/device_check.py at toy scale on CPU: the engine's pieces (generation, reward, reference,
one DPO step with Megatron's optimizer, checkpoint save + load) in one process, without Ray, with
its own checks (step-1 loss ln 2, repeated forward equal, finite loss after the step, checkpoint
round trip). The same script runs at llama32_1b size in bf16 on a GPU (bench/device_check.sh)."""

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
    for phase in ("build", "generate", "reward", "reference", "reference2", "optimizer", "train", "after", "save", "load"):
        assert r["phases"][phase]["seconds"] >= 0
    assert 0 < r["phases"]["train"]["mfu"] < 1.5  # against a measured fp32 matmul peak: noisy on a shared CPU
    assert r["memory_per_role"] is None  # CPU: no allocator counter; accelerators report bytes per role
