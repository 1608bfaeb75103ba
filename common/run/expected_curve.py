"""Expected loss curves: recorded by ``tools/record_curve.py`` from a real run, compared by tests.

``recipes/<name>/expected_loss.json`` is the curve of the recipe's frozen config as shipped;
``recipes/<name>/expected_loss.<overlay>.json`` the curve of the frozen config with an overlay
merged over it (``--overlay cpu_scale``: the CPU-scale run of a recipe made for NPUs/GPUs). Each
holds the per-step losses, the run-to-run noise measured when it was recorded, the tolerance derived
from it, the command, and the environment (library versions, CPU, git commit) it was recorded in.
"""

from __future__ import annotations

import json
from pathlib import Path


def curve_path(recipe_dir: Path, overlay: str | None = None) -> Path:
    name = "expected_loss.json" if overlay is None else f"expected_loss.{Path(overlay).stem}.json"
    return Path(recipe_dir) / name


def load_expected(recipe_dir: Path, overlay: str | None = None) -> dict | None:
    path = curve_path(recipe_dir, overlay)
    return json.loads(path.read_text()) if path.is_file() else None


# A curve that moves the same way at every step by less than the per-step tolerance is still a
# regression (a slightly different beta, a mask off by one token): the mean signed difference over
# the steps after the first must stay within this fraction of the tolerance. Measured across CPUs
# and kernel paths it stays far below (see each curve's ``checked_in``).
DRIFT_FRACTION = 0.25


def compare(expected: dict, losses: list[float]) -> list[str]:
    """Problems found comparing ``losses`` (steps 1..n) with the expected curve; [] when it matches:
    every step within the curve's tolerance, and no one-sided drift."""
    problems = []
    want = expected["loss"]
    if len(losses) != len(want):
        problems.append(f"{len(losses)} steps, expected {len(want)}")
    return problems + _step_problems(losses, want, expected["tolerance"])


# The fast tier runs a curve's first steps only, where a regression has had no time to move the loss
# far: beta x 1.1 moves steps 2-4 of the tiny curve by +3.4e-4, +6.4e-4, -4.9e-4 (mean +1.6e-4), within
# the curve's tolerance (1e-3) and its drift bound (2.5e-4). Those steps are also where kernels have had
# no time to compound their rounding: the tiny recipe's steps 1-4 on an AVX2 CPU, natively and under
# ATEN_CPU_CAPABILITY=default and avx2, are within 1.8e-6 of the curve recorded on an AVX-512 one. So a
# curve's first START_STEPS steps are held to START_TOLERANCE (~50x that spread, 3-6x below beta x 1.1's
# steps 2-4; its drift bound, 2.5e-5, 6x below beta x 1.1's mean).
START_STEPS = 4
START_TOLERANCE = 1e-4


def compare_start(expected: dict, losses: list[float]) -> list[str]:
    """Problems found comparing a short run's ``losses`` (steps 1..n, n <= START_STEPS) with the
    curve's first n steps; [] when they match: every step within START_TOLERANCE (or the curve's own
    tolerance where that is smaller), and no one-sided drift."""
    if not 1 <= len(losses) <= START_STEPS:
        raise ValueError(f"compare_start takes 1 to {START_STEPS} steps, not {len(losses)}: use compare")
    want = expected["loss"]
    if len(want) < len(losses):
        return [f"{len(losses)} steps, the curve has {len(want)}"]
    return _step_problems(losses, want[: len(losses)], min(START_TOLERANCE, expected["tolerance"]))


def _step_problems(losses: list[float], want: list[float], tol: float) -> list[str]:
    problems = []
    for step, (got, exp) in enumerate(zip(losses, want), start=1):
        if abs(got - exp) > tol:
            problems.append(f"step {step}: loss {got:.6f} vs expected {exp:.6f} (|diff| > {tol:g})")
    diffs = [got - exp for got, exp in zip(losses[1:], want[1:])]
    if diffs:
        drift = sum(diffs) / len(diffs)
        if abs(drift) > DRIFT_FRACTION * tol:
            problems.append(
                f"steps 2-{len(diffs) + 1}: mean loss difference {drift:+.6f} (|mean| > {DRIFT_FRACTION} x {tol:g}): "
                "the curve drifts one way"
            )
    return problems
