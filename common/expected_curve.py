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
    tol = expected["tolerance"]
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
