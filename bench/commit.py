"""The commit a bench report ran at, for every report of bench/ (device check, vs_trl, staleness)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> dict:
    """``{"commit", "dirty"}``: ODPO_GIT_COMMIT when set (the device tool's copy of the tree carries a
    .git of another commit; the tree's state is the caller's to vouch for: ``dirty`` None), else git's
    HEAD and whether tracked files have uncommitted changes; both None without a git repository."""
    if os.environ.get("ODPO_GIT_COMMIT"):
        return {"commit": os.environ["ODPO_GIT_COMMIT"], "dirty": None}
    try:
        git = dict(cwd=ROOT, capture_output=True, text=True, check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **git).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **git).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}
