"""Shared test set-up: local-only Ray (one cluster shared by the recipe runs), tiny-recipe runs. (The project is installed by setup.sh;
pytest.ini puts the repository root on the path for `tests._dist`.)"""

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Throwaway local Ray clusters in tests only; the project default keeps Ray's token auth.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


_shared_cluster = contextlib.ExitStack()  # holds the cluster's process once started
_shared_address: str | None = None


def shared_ray_address() -> str:
    """The session's one-node Ray cluster (this machine's CPUs), started on first use.

    ``run_recipe`` runs join it through ``RAY_ADDRESS``, as a user's jobs join a running cluster,
    instead of each starting and stopping a private instance (~3 s of every run): Ray's testing
    guide's advice, one cluster shared by the tests. Runs started otherwise (test_run_endings'
    ``Job``, test_resume) keep the private instance: they look at the run's own processes, and they
    are what tests that path. The cluster runs in its own process (``cluster_process``): tests fork."""
    global _shared_address
    if _shared_address is None:
        from tools.simulated_cluster import cluster_process

        _shared_address = _shared_cluster.enter_context(cluster_process(nodes=1, cpus=os.cpu_count(), npus=0))
    return _shared_address


@pytest.fixture(scope="session", autouse=True)
def _stop_shared_ray():
    yield
    _shared_cluster.close()


def run_recipe(
    recipe: str, out: Path, *overrides: str, cwd: Path = ROOT, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``./run.sh <recipe> --out <out> <overrides>`` as a user would, on the session's Ray
    cluster (``shared_ray_address``) unless ``env`` names another ``RAY_ADDRESS``."""
    return subprocess.run(
        [str(ROOT / "run.sh"), recipe, "--out", str(out), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "RAY_ADDRESS": shared_ray_address(), **(env or {})},
        timeout=900,
    )


def run_recipe_killed(recipe: str, out: Path, rows: int, *overrides: str) -> None:
    """Start ``./run.sh <recipe> --out <out> <overrides>`` (its own private Ray instance) and SIGKILL
    its whole process group once ``metrics.jsonl`` holds ``rows`` rows, as a crash or ``kill -9`` would."""
    import signal
    import time

    from common.run.outputs import read_jsonl

    job = subprocess.Popen(
        [str(ROOT / "run.sh"), recipe, "--out", str(out), *overrides], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            metrics = out / "metrics.jsonl"
            if metrics.is_file() and len(read_jsonl(metrics)) >= rows:
                break
            assert job.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
        os.killpg(job.pid, signal.SIGKILL)
    finally:
        job.wait()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One full run of the shipped tiny recipe (no overrides), shared by the tests that read it."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    proc = run_recipe("tiny", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


SHORT_RUN = ("training.train_iters=4", "training.save_interval=2")


@pytest.fixture(scope="session")
def short_run(tmp_path_factory):
    """The fast tier's one Ray run, shared: four iterations of the shipped tiny recipe (actor TP=2),
    checkpoints at 2 and 4, and ``--export-hf``. Returns the folder holding ``run/`` and ``hf/``. Its
    settings are ``SHORT_RUN``: a run given them is this run (test_run_endings compares with it)."""
    root = tmp_path_factory.mktemp("short")
    proc = run_recipe("tiny", root / "run", *SHORT_RUN, "--export-hf", str(root / "hf"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return root


@pytest.fixture(scope="module")
def world1():
    """A TP=1 Megatron world in this test process (for tests that build models in-process)."""
    from common.model import parallel
    from tests._dist import free_port, init_world

    init_world(rank=0, world_size=1, port=free_port(), tp=1, pp=1, threads=2)
    yield
    parallel.destroy_model_parallel()
