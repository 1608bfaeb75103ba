"""The `smollm2_135m` recipe: the real SmolLM2-135M-Instruct, its tokenizer and template, VADER reward.

The smoke overlay runs the shipped config (only the model folder's path differs: it is converted
into the test cache, ``$ODPO_CACHE``, not into the checkout) for 4 short iterations, checked against
the recorded curve ``recipes/smollm2_135m/expected_loss.smoke.json``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from conftest import ROOT, run_recipe


@pytest.fixture(scope="module")
def smollm2_dir():
    from tools.fetch_smollm2 import main

    out = Path(os.environ.get("ODPO_CACHE", Path.home() / ".cache" / "odpo")) / "smollm2" / "SmolLM2-135M-Instruct"
    assert main(["--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def smoke_run(smollm2_dir, tmp_path_factory):
    """``./run.sh smollm2_135m --overlay smoke --export-hf`` (4 iterations); returns the folder of ``run/`` and ``hf/``."""
    root = tmp_path_factory.mktemp("smollm2")
    proc = run_recipe(
        "smollm2_135m", root / "run", "--overlay", "smoke", "--export-hf", str(root / "hf"),
        f"actor_rollout_ref.actor_rollout.load={smollm2_dir}", f"training.tokenizer_name_or_path={smollm2_dir}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return root


@pytest.mark.slow
@pytest.mark.curve
def test_smoke_run(smoke_run):
    from common.run.expected_curve import compare, load_expected
    from common.run.outputs import read_jsonl

    tmp_path = smoke_run
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-4  # policy == reference before the first update
    expected = load_expected(ROOT / "recipes" / "smollm2_135m", "smoke")
    assert expected is not None, (
        "expected_loss.smoke.json missing: record it with tools/record_curve.py smollm2_135m --overlay smoke"
    )
    assert compare(expected, [r["loss"] for r in rows]) == []  # the real model's curve, as recorded
    rollouts = read_jsonl(tmp_path / "run" / "rollouts.jsonl")
    assert len(rollouts) == 8
    for r in rollouts:
        assert all(-1.0 <= s <= 1.0 for s in r["scores"])  # VADER compound, no EOS penalty
        assert all(isinstance(t, str) for t in r["responses"]) and any(t.strip() for t in r["responses"])
    assert (tmp_path / "run" / "final" / "meta.json").is_file()


@pytest.mark.slow
def test_trained_smollm2_exports_to_transformers(smoke_run, smollm2_dir, world1):
    """The real model's ``final/``, exported to HF: transformers' logits equal the project's within 1e-4."""
    import torch

    from common.model.llama import build_policy
    from common.weights.convert import arch_from_path, load_into_model
    from tests._export import check_export_matches

    arch, _ = arch_from_path(smollm2_dir)
    start = build_policy(arch, dtype=torch.float32, seed=0).eval()
    load_into_model(start, smollm2_dir, arch)  # the starting policy: SmolLM2-135M-Instruct itself
    prompts = ["Describe a lighthouse in one sentence.", "What do you think about rainy days?", "hi"]
    check_export_matches(smoke_run / "run" / "final", smoke_run / "hf", prompts, start)


def test_missing_model_prints_the_fetch_command(tmp_path, monkeypatch):
    """Without the converted model the run stops before Ray with the exact command that makes it."""
    import common.config.load
    from common.config.load import load_config, recipe_files
    from common.run.preflight import check_files

    monkeypatch.setattr(common.config.load, "PROJECT_ROOT", tmp_path)  # a checkout without models/
    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "recipes" / "smollm2_135m" / "config.yaml")
    with pytest.raises(ValueError) as e:
        check_files(cfg, recipe_files(ROOT / "recipes" / "smollm2_135m"))
    assert ".venv/bin/python -m tools.fetch_smollm2 --out models/SmolLM2-135M-Instruct" in str(e.value)
