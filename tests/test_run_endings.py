"""How a run ends when it does not simply finish (issue 12): a lost worker, SIGTERM, NaN/inf, a
collapsed policy, and ``--nodes`` without a cluster. Real ``./run.sh tiny`` runs on a private Ray
instance; facts are read from the run folder, only the user-facing message from stderr."""

import os
import signal
import subprocess
import time

import psutil
import pytest
from conftest import ROOT, SHORT_RUN, run_recipe

from common.run.outputs import read_jsonl
from common.train.health import (
    COLLAPSE_ITERS,
    MIN_LOSS_SCALE,
    CollapseWatch,
    NonFiniteError,
    check_finite,
    check_loss_scale,
)

SETTINGS = SHORT_RUN  # 4 iterations, checkpoints at 2 and 4: the shared run of conftest is the uninterrupted one


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in rows]


def latest(run_dir):
    return (run_dir / "checkpoints" / "latest").read_text().strip()


class Job:
    """``./run.sh tiny`` in the background, its output in files (a pipe could fill and block it)."""

    def __init__(self, out, *overrides):
        self.out = out
        self.log = out.parent / f"{out.name}.stderr"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [str(ROOT / "run.sh"), "tiny", "--out", str(out), *overrides],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
            )  # fmt: skip

    def wait_rows(self, n, timeout=600):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            metrics = self.out / "metrics.jsonl"
            if metrics.is_file() and len(read_jsonl(metrics)) >= n:
                return
            assert self.proc.poll() is None, "the run ended early:\n" + self.log.read_text()[-3000:]
            time.sleep(0.2)
        raise AssertionError(f"no {n} metrics rows after {timeout} s")

    def worker(self, cls):
        """The process of the run's Ray worker of class ``cls`` (a descendant of this driver only)."""
        found = [
            p
            for p in psutil.Process(self.proc.pid).children(recursive=True)
            if " ".join(p.cmdline()).startswith(f"ray::{cls}")
        ]
        assert found, f"no {cls} process under the driver"
        return found[0]

    def wait(self, timeout=900):
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def last_lines(self, n=8):
        return "\n".join(self.log.read_text().replace("\r", "\n").strip().splitlines()[-n:])


def resume(run_dir):
    return subprocess.run(
        [str(ROOT / "run.sh"), "tiny", "--resume", str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="session")
def whole(short_run):
    """The uninterrupted run every interrupted one must equal: conftest's shared ``SHORT_RUN`` run."""
    return short_run / "run"


# ----------------------------------------------------------------------------- a lost worker


@pytest.mark.slow
def test_killed_worker_stops_with_resume_command_then_resume_completes(tmp_path, whole):
    job = Job(tmp_path / "run", *SETTINGS)
    job.wait_rows(2)  # checkpoint 2 is complete
    ref = job.worker("ReferenceProcess")
    killed = time.monotonic()
    ref.kill()
    rc = job.wait()
    stopped_in = time.monotonic() - killed
    tail = job.last_lines()
    assert rc == 1, tail
    assert stopped_in < 30, f"the driver took {stopped_in:.1f} s to stop"
    assert "Traceback" not in job.log.read_text()
    for fact in (
        "worker ref rank 0",
        "iteration ",
        "killed from outside",
        "iter_000002",
        f"./run.sh tiny --resume {job.out}",
    ):
        assert fact in tail, f"{fact!r} not among the last lines:\n{tail}"
    assert (job.out / "loss.png").is_file()
    assert latest(job.out) == "iter_000002"

    again = resume(job.out)
    assert again.returncode == 0, again.stderr[-5000:]
    assert comparable(read_jsonl(job.out / "metrics.jsonl")) == comparable(read_jsonl(whole / "metrics.jsonl"))


@pytest.mark.slow
def test_max_restarts_survives_a_killed_worker(tmp_path, whole):
    job = Job(tmp_path / "run", *SETTINGS, "training.max_restarts=1")
    job.wait_rows(3)  # past checkpoint 2: the restart goes back to it and repeats iteration 3
    job.worker("ReferenceProcess").kill()
    rc = job.wait()
    assert rc == 0, job.last_lines(30)
    assert "Restarting every role from iter_000002" in job.log.read_text()
    assert comparable(read_jsonl(job.out / "metrics.jsonl")) == comparable(read_jsonl(whole / "metrics.jsonl"))
    assert read_jsonl(job.out / "rollouts.jsonl") == read_jsonl(whole / "rollouts.jsonl")


def test_max_restarts_needs_checkpoints(tmp_path):
    proc = run_recipe("tiny", tmp_path / "run", "training.max_restarts=1")
    assert proc.returncode != 0
    assert "training.max_restarts=1" in proc.stderr and "save_interval" in proc.stderr
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- signals


@pytest.mark.slow
def test_sigterm_stops_at_iteration_boundary_with_checkpoint(tmp_path, whole):
    job = Job(tmp_path / "run", *SETTINGS)
    job.wait_rows(1)
    job.proc.send_signal(signal.SIGTERM)  # what a job scheduler sends first (run.sh execs python)
    rc = job.wait()
    assert rc == 143, job.last_lines(30)
    done = len(read_jsonl(job.out / "metrics.jsonl"))
    assert done in (1, 2, 3)  # the iteration under way was finished, then it stopped
    assert latest(job.out) == f"iter_{done:06d}"  # saved at the boundary (save_interval=2 or not)
    assert (job.out / "loss.png").is_file()
    assert f"--resume {job.out}" in job.last_lines()

    again = resume(job.out)
    assert again.returncode == 0, again.stderr[-5000:]
    assert comparable(read_jsonl(job.out / "metrics.jsonl")) == comparable(read_jsonl(whole / "metrics.jsonl"))


# ----------------------------------------------------------------------------- NaN/inf, collapse


@pytest.mark.slow
def test_non_finite_update_stops_and_keeps_last_good_checkpoint(tmp_path):
    # lr=1e30: the first Adam step blows the weights up; iteration 2's gradients are NaN
    out = tmp_path / "run"
    proc = run_recipe(
        "tiny", out, "training.train_iters=3", "training.save_interval=1", "actor_rollout_ref.actor_rollout.lr=1e30"
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
    assert "iteration 2: the update is not finite" in tail and f"--resume {out}" in tail
    assert "Traceback" not in proc.stderr
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1]
    assert latest(out) == "iter_000001"
    assert not list((out / "checkpoints").glob("iter_000002*"))  # nothing saved from the bad state
    assert (out / "loss.png").is_file()


@pytest.mark.slow
def test_collapsed_policy_is_warned_about(tmp_path):
    out = tmp_path / "run"
    proc = run_recipe(
        "tiny", out, f"training.train_iters={COLLAPSE_ITERS + 1}", "actor_rollout_ref.actor_rollout.lr=1e6"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    warned = read_jsonl(out / "warnings.jsonl")
    assert warned and "collapsed" in warned[0]["warning"]
    assert "collapsed" in proc.stderr


def test_health_checks():
    check_finite([-3.0, -4.0], [0.5])
    with pytest.raises(NonFiniteError, match="gradient norm"):
        check_finite([-3.0], [float("nan")])
    with pytest.raises(NonFiniteError, match="log-probs"):
        check_finite([float("-inf")], [1.0])
    watch = CollapseWatch(vocab_size=128256)
    near_uniform = 11.75  # a random-init policy: ~0.01 nats/token below ln(128256) = 11.7617
    assert all(watch.update(s, 0.3, near_uniform) is None for s in range(1, 10))
    said = [watch.update(s, 0.0, 11.7617) for s in range(1, 2 * COLLAPSE_ITERS)]
    assert [s is not None for s in said].count(True) == 1 and said[COLLAPSE_ITERS - 1]
    # fp16: skipped steps are loss scaling at work, until every step overflows at the smallest scale
    check_loss_scale(skipped=2, steps=2, scale=2.0**15)
    check_loss_scale(skipped=1, steps=2, scale=MIN_LOSS_SCALE)
    check_loss_scale(skipped=0, steps=1, scale=None)
    with pytest.raises(NonFiniteError, match="training.dtype=bf16"):
        check_loss_scale(skipped=2, steps=2, scale=MIN_LOSS_SCALE)


# ----------------------------------------------------------------------------- --nodes


def test_nodes_without_cluster_says_how_to_start_one(tmp_path):
    """No RAY_ADDRESS, no `ray start` here: one message, no traceback, no run folder; a private Ray
    instance of another process on this machine is not joined."""
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False)  # someone else's private instance
    try:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["RAY_TMPDIR"] = str(tmp_path)  # where `ray start` would have recorded its cluster: nothing
        out = tmp_path / "run"
        proc = subprocess.run(
            [str(ROOT / "run.sh"), "tiny", "--nodes", "2", "--out", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    finally:
        ray.shutdown()
    assert proc.returncode == 1
    assert "no Ray cluster found; start one with `ray start --head" in proc.stderr and "RAY_ADDRESS" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_nodes_with_dead_ray_address(tmp_path):
    out = tmp_path / "run"
    proc = run_recipe("tiny", out, "--nodes", "2", env={"RAY_ADDRESS": "127.0.0.1:1"})
    assert proc.returncode == 1
    assert "RAY_ADDRESS=127.0.0.1:1: nothing answers" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


# ----------------------------------------------------------------------------- library noise


def test_library_noise_is_filtered_and_the_rest_shows(caplog):
    import logging
    import warnings

    from common.util.quiet import RAY_AUTH_LOGGER, RAY_WORKER_LOGGER, filter_library_warnings, quiet_private_ray

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        filter_library_warnings()
        warnings.warn(
            "Transformer Engine and Apex are not installed. Falling back to Torch optimizers.",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("something the user must fix", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something the user must fix"]

    quiet_private_ray()
    logger = logging.getLogger(RAY_AUTH_LOGGER)
    with caplog.at_level(logging.WARNING, logger=RAY_AUTH_LOGGER):
        logger.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
        logger.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
    assert [r.getMessage()[:40] for r in caplog.records] == ["Token authentication is disabled for thi"]
    caplog.clear()
    logger = logging.getLogger(RAY_WORKER_LOGGER)
    with caplog.at_level(logging.WARNING, logger=RAY_WORKER_LOGGER):
        logger.warning("SIGTERM handler is not set because current thread is not the main thread.")
        logger.warning("some other Ray warning")
    assert [r.getMessage() for r in caplog.records] == ["some other Ray warning"]
