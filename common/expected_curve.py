"""Expected loss curves: recorded by ``tools/record_curve.py`` from a real run, compared by tests.

``recipes/<name>/expected_loss.json`` holds the per-step losses, the run-to-run noise measured when
it was recorded, the tolerance derived from it, and the environment (library versions, CPU,
git commit) it was recorded in.
"""

from __future__ import annotations

import json
from pathlib import Path

FILENAME = "expected_loss.json"


def load_expected(recipe_dir: Path) -> dict | None:
    path = Path(recipe_dir) / FILENAME
    return json.loads(path.read_text()) if path.is_file() else None


def compare(expected: dict, losses: list[float]) -> list[str]:
    """Problems found comparing ``losses`` (steps 1..n) with the expected curve; [] when it matches."""
    problems = []
    want = expected["loss"]
    if len(losses) != len(want):
        problems.append(f"{len(losses)} steps, expected {len(want)}")
    tol = expected["tolerance"]
    for step, (got, exp) in enumerate(zip(losses, want), start=1):
        if abs(got - exp) > tol:
            problems.append(f"step {step}: loss {got:.6f} vs expected {exp:.6f} (|diff| > {tol:g})")
    return problems
