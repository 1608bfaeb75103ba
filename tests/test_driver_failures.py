"""Failures outside the workers end a run as cleanly as a worker's (issue 29): a reward function
that raises or returns NaN mid-run, a disk that fills during a checkpoint, a signal during start-up.
Each ends with one message (what failed, at which iteration, the last checkpoint, the ``--resume``
command), no traceback, ``failure.txt`` and ``loss.png``, no ``*.tmp`` left; ``--resume`` then
writes the rows of an uninterrupted run. Real ``./run.sh tiny`` runs with the reward function of
``tests/_scripted_reward.py``, which fails on the calls the environment names."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SHORT_RUN, run_recipe, shared_ray_address

from common.run.outputs import read_jsonl
from tools.bad_inputs import can_mount

REWARD = "reward.function=tests._scripted_reward:score"
SETTINGS = (*SHORT_RUN, REWARD)  # 4 iterations, checkpoints at 2 and 4


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in rows]


def last_lines(text, n=6):
    return "\n".join(text.replace("\r", "\n").strip().splitlines()[-n:])


def leftovers(run_dir: Path) -> list[str]:
    """Temporary files and folders of interrupted writes."""
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if ".tmp" in p.name)


def check_stopped(proc, run_dir: Path, *facts: str) -> str:
    """Exit 1, the facts among the last lines, no traceback, the plot and failure.txt, no partial writes."""
    tail = last_lines(proc.stderr)
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    for fact in facts:
        assert fact in tail, f"{fact!r} not among the last lines:\n{tail}"
    assert (run_dir / "loss.png").is_file() and (run_dir / "failure.txt").is_file()
    assert leftovers(run_dir) == []
    return tail


def resume(run_dir: Path):
    """``./run.sh tiny --resume RUN_DIR`` on the session's Ray cluster (as ``run_recipe`` runs)."""
    return subprocess.run(
        [str(ROOT / "run.sh"), "tiny", "--resume", str(run_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "RAY_ADDRESS": shared_ray_address()},
    )  # fmt: skip


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """The uninterrupted run the others must equal. Its reward function fails twice at iteration 2
    and ``reward.function_retries=2`` calls it a third time: every other test compares its rows with
    runs whose function never failed in the iterations they wrote (a failure stops those runs), so
    they also show that retries change nothing."""
    out = tmp_path_factory.mktemp("whole") / "run"
    env = {"ODPO_TEST_REWARD_RAISE": "3,4"}  # calls 3 and 4: iteration 2's first two attempts
    proc = run_recipe("tiny", out, *SETTINGS, "reward.function_retries=2", env=env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out, proc


@pytest.fixture(scope="module")
def whole(whole_run):
    return whole_run[0]


# ----------------------------------------------------------------------------- reward functions


@pytest.mark.slow
def test_reward_function_raising_at_iteration_3_stops_then_resume_completes(tmp_path, whole):
    out = tmp_path / "run"
    proc = run_recipe("tiny", out, *SETTINGS, env={"ODPO_TEST_REWARD_RAISE": "4"})  # call 4: iteration 3
    check_stopped(
        proc,
        out,
        "error: iteration 3: reward function tests._scripted_reward:score raised on the prompts of index ",
        "TimeoutError: the scoring service did not answer in 30 s",
        "last checkpoint: ",
        "iter_000002 (iteration 2), intact",
        f"continue with: ./run.sh tiny --resume {out}",
    )
    assert (out / "checkpoints" / "latest").read_text().strip() == "iter_000002"
    assert "TimeoutError" in (out / "failure.txt").read_text()  # the function's own traceback is kept there

    again = resume(out)
    assert again.returncode == 0, again.stderr[-5000:]
    assert comparable(read_jsonl(out / "metrics.jsonl")) == comparable(read_jsonl(whole / "metrics.jsonl"))
    assert read_jsonl(out / "rollouts.jsonl") == read_jsonl(whole / "rollouts.jsonl")


@pytest.mark.slow
def test_reward_function_nan_at_iteration_2_names_the_prompt_then_resume_completes(tmp_path, whole):
    out = tmp_path / "run"
    proc = run_recipe("tiny", out, *SETTINGS, "training.save_interval=1", env={"ODPO_TEST_REWARD_NAN": "3"})
    tail = check_stopped(
        proc,
        out,
        "error: iteration 2: reward function tests._scripted_reward:score returned NaN for response 3 (prompt index ",
        "; return finite scores",
        "iter_000001 (iteration 1), intact",
        f"continue with: ./run.sh tiny --resume {out}",
    )
    # the prompt named is the one the fourth response of iteration 2 answered (2 responses per
    # prompt, 8 prompts per iteration; tiny drops no prompt, so the index is the file's line)
    assert ", 0 dropped as too long)" in proc.stdout
    prompt = int(tail.split("(prompt index ")[1].split(")")[0])
    assert read_jsonl(whole / "rollouts.jsonl")[8 + 1]["prompt"] == read_prompt(prompt)

    again = resume(out)
    assert again.returncode == 0, again.stderr[-5000:]
    assert comparable(read_jsonl(out / "metrics.jsonl")) == comparable(read_jsonl(whole / "metrics.jsonl"))


def read_prompt(index: int) -> str:
    """Prompt ``index`` of the tiny recipe's prompt file, as rollouts.jsonl shows it."""
    rows = read_jsonl(ROOT / "data" / "prompts" / "tiny_prompts.jsonl")
    from common.prompts.messages import prompt_text

    return prompt_text(rows[index]["prompt"])


@pytest.mark.slow
def test_reward_function_retries_survive_two_failures(whole_run):
    """The rows of this run equal those of runs whose function never failed: the other tests."""
    _, proc = whole_run
    retried = [line for line in proc.stderr.splitlines() if "calling it again in" in line]
    assert len(retried) == 2, proc.stderr[-3000:]
    assert (
        "raised TimeoutError: the scoring service did not answer in 30 s (call 3); calling it again in 1 s (1 of "
        in retried[0]
    )
    assert "(call 4); calling it again in 2 s (2 of reward.function_retries=2)" in retried[1]
    assert len(read_jsonl(whole_run[0] / "metrics.jsonl")) == 4


# ----------------------------------------------------------------------------- a full disk

DISK_SCRIPT = """
set -u
mount -t tmpfs -o size=160m tmpfs "$MNT" || exit 90
cd "$ROOT"
./run.sh tiny --out "$MNT/run" {settings} >"$LOGS/first.out" 2>"$LOGS/first.err"
echo $? >"$LOGS/first.rc"
(cd "$MNT/run" && find . | sort) >"$LOGS/after_first.txt"
cat "$MNT/run/checkpoints/latest" >"$LOGS/latest_after_first.txt"
mount -o remount,size=400m "$MNT"  # space freed
./run.sh tiny --resume "$MNT/run" >"$LOGS/resume.out" 2>"$LOGS/resume.err"
echo $? >"$LOGS/resume.rc"
cp -a "$MNT/run" "$LOGS/run"
"""


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_keeps_the_last_one_then_resume_completes(tmp_path, whole):
    """A 160 MiB tmpfs: iteration 2's checkpoint (95 MiB) fits, iteration 4's does not. Its own
    private Ray instance, in the same mount namespace, so the workers write to the small disk."""
    assert can_mount(), "this test needs `unshare -m` (root, or user namespaces); CI has it"
    logs, mnt = tmp_path / "logs", tmp_path / "mnt"
    logs.mkdir()
    mnt.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private instance, inside the namespace
    env.update(MNT=str(mnt), LOGS=str(logs), ROOT=str(ROOT))
    script = DISK_SCRIPT.format(settings=" ".join(SETTINGS))
    done = subprocess.run(
        ["unshare", "-m", "bash", "-c", script], env=env, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stderr[-3000:]
    first_err = (logs / "first.err").read_text()
    proc = subprocess.CompletedProcess([], int((logs / "first.rc").read_text()), "", first_err)
    run_dir = mnt / "run"
    tail = last_lines(first_err)
    assert proc.returncode == 1, first_err[-4000:]
    assert "Traceback" not in first_err
    for fact in (
        "error: iteration 4: writing the checkpoint iter_000004 failed (the disk is full)",
        f"its partial folder {run_dir}/checkpoints/iter_000004.tmp was removed",
        "one checkpoint takes about 95 MiB",
        f"last checkpoint: {run_dir}/checkpoints/iter_000002 (iteration 2), intact",
        f"continue with: ./run.sh tiny --resume {run_dir}",
    ):
        assert fact in tail, f"{fact!r} not among the last lines:\n{tail}"
    assert "warning: the disk of the run folder" in first_err  # said up front: 3 checkpoints do not fit
    listing = (logs / "after_first.txt").read_text().split()
    assert "./loss.png" in listing and "./failure.txt" in listing
    assert [p for p in listing if ".tmp" in p] == []
    assert "./checkpoints/iter_000002/optim_rank1.pt" in listing
    assert not any(p.startswith("./checkpoints/iter_000004") for p in listing)
    assert (logs / "latest_after_first.txt").read_text().strip() == "iter_000002"

    assert (logs / "resume.rc").read_text().strip() == "0", (logs / "resume.err").read_text()[-4000:]
    copy = logs / "run"
    assert comparable(read_jsonl(copy / "metrics.jsonl")) == comparable(read_jsonl(whole / "metrics.jsonl"))
    assert read_jsonl(copy / "rollouts.jsonl") == read_jsonl(whole / "rollouts.jsonl")


FINAL_SCRIPT = """
mount -t tmpfs -o size=20m tmpfs "$MNT" || exit 90
cd "$ROOT"
./run.sh tiny --out "$MNT/run" training.train_iters=1 {reward} >"$LOGS/first.out" 2>"$LOGS/first.err"
echo $? >"$LOGS/first.rc"
(cd "$MNT/run" && find . | sort) >"$LOGS/listing.txt"
"""


@pytest.mark.slow
def test_full_disk_while_writing_final_says_so_and_leaves_no_partial_folder(tmp_path):
    """Saving off, a 20 MiB disk: warned about before Ray (final/ takes 32 MiB); the run trains, then
    writing final/ fails: one message, the plot and failure.txt, no ``.final.tmp`` left."""
    assert can_mount(), "this test needs `unshare -m` (root, or user namespaces); CI has it"
    logs, mnt = tmp_path / "logs", tmp_path / "mnt"
    logs.mkdir()
    mnt.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MNT=str(mnt), LOGS=str(logs), ROOT=str(ROOT))
    script = FINAL_SCRIPT.format(reward=REWARD)
    done = subprocess.run(["unshare", "-m", "bash", "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    err = (logs / "first.err").read_text()
    assert (logs / "first.rc").read_text().strip() == "1", err[-4000:]
    assert "Traceback" not in err
    assert "warning: the disk of the run folder" in err and "the trained actor (final/) takes about 32 MiB" in err
    tail = last_lines(err, 3)
    assert f"error: iteration 1: writing {mnt}/run/final failed: " in tail and "No space left on device" in tail
    assert "no checkpoint was written (training.save_interval=0)" in tail
    listing = (logs / "listing.txt").read_text().split()
    assert "./loss.png" in listing and "./failure.txt" in listing and "./metrics.jsonl" in listing
    assert [p for p in listing if "final" in p or ".tmp" in p] == []


# ----------------------------------------------------------------------------- signals during start-up


def descendants(pid: int) -> list[int]:
    from common.run.stop_signals import _descendants

    return _descendants(pid)


def alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (zombies are gone: they only wait for their parent to read them)."""
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out


@pytest.mark.parametrize(
    "moment, sig, code",
    [
        ("placement:", signal.SIGTERM, 143),  # printed just before the roles build their models
        ("run folder:", signal.SIGINT, 130),  # the roles' processes still importing
    ],
)
def test_a_signal_during_start_up_ends_the_run_at_once_with_no_process_left(tmp_path, moment, sig, code):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private instance: its processes are ours
    stdout, stderr = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(stdout, "w") as o, open(stderr, "w") as e:
        proc = subprocess.Popen(
            [str(ROOT / "run.sh"), "tiny", "--out", str(out)], cwd=ROOT, stdout=o, stderr=e, env=env,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while moment not in stdout.read_text():
            assert proc.poll() is None, stderr.read_text()[-3000:]
            assert time.monotonic() < deadline, "start-up did not get there in 300 s"
            time.sleep(0.02)
        ray_processes = descendants(proc.pid)
        assert ray_processes, "no process under the driver: the run did not start a private Ray instance"
        sent = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == code, stderr.read_text()[-3000:]
    assert took < 10, f"the driver took {took:.1f} s to stop"
    err = stderr.read_text()
    assert f"{sig.name} during start-up: stopped before the first iteration" in last_lines(err, 2)
    assert "Traceback" not in err
    deadline = time.monotonic() + 5
    while alive(ray_processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(ray_processes) == [], [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in alive(ray_processes)]
    assert not (out / "metrics.jsonl").is_file() or read_jsonl(out / "metrics.jsonl") == []  # no iteration ran


# ----------------------------------------------------------------------------- disk space, estimated


def test_the_checkpoint_size_estimate_is_what_a_checkpoint_takes(short_run):
    """The start-up disk check's size (from the model and dtype) against the shared run's real
    checkpoint and final/ folder: within 1 %."""
    from omegaconf import OmegaConf

    from common.run.checkpoint import estimated_bytes

    run = short_run / "run"
    cfg = OmegaConf.load(run / "config.yaml")

    def size(folder: Path) -> int:
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())

    on_disk = size(run / "checkpoints" / "iter_000004")
    assert abs(estimated_bytes(cfg) - on_disk) / on_disk < 0.01, (estimated_bytes(cfg), on_disk)
    final = size(run / "final")
    assert abs(estimated_bytes(cfg, weights_only=True) - final) / final < 0.01, (estimated_bytes(cfg, True), final)


# ----------------------------------------------------------------------------- the failure path cannot fail


def test_the_failure_message_survives_a_disk_that_takes_nothing(tmp_path, monkeypatch):
    """``Session._fail`` on a disk where no file can be written: the message still comes, first,
    and names each file it could not write with the reason."""
    import errno

    from omegaconf import OmegaConf
    from tqdm import tqdm

    from common.run import session as session_module
    from common.run.session import Session

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class FullDiskWriter:
        close = staticmethod(full)

    monkeypatch.setattr(session_module, "write_text", full)
    monkeypatch.setattr(session_module, "plot_loss", full)
    run = Session.__new__(Session)
    run.recipe, run.run_dir, run._expected, run._writer = "tiny", tmp_path, None, FullDiskWriter()
    run.cfg = OmegaConf.create({"training": {"save_interval": 2}})
    run.bar = tqdm(total=1, disable=True)
    with pytest.raises(SystemExit) as stop:
        run._fail(3, "reward function m:f raised: TimeoutError: no answer", details="Traceback ...")
    lines = str(stop.value.code).splitlines()
    assert lines[0] == "error: iteration 3: reward function m:f raised: TimeoutError: no answer."
    assert "  no checkpoint yet (the first is at iteration 2): rerun from the start" in lines
    for name in ("metrics.jsonl", "failure.txt", "loss.png"):
        assert any(name in line and "[Errno 28] No space left on device" in line for line in lines), lines
    assert f"  outputs so far: {tmp_path}/ (metrics.jsonl)" in lines


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_an_error_in_a_worker_names_its_role_rank_and_node():
    """Ray's copy of a worker's exception, as ``ray.get`` raises it (``RayTaskError(ValueError)``, whose
    dual class drops ``_actor_id``): the role, rank and node still come from the traceback's header."""
    from ray.exceptions import RayTaskError

    from common.run.failures import describe_failure

    actor_id = "2e9fbf591a37e9f79c1d8ba901000000"
    try:
        raise ValueError("bad shapes\nin the second line")
    except ValueError as e:
        cause, tb = e, "Traceback (most recent call last):\n  File x\nValueError: bad shapes"
    err = RayTaskError(
        "call", tb, cause, proctitle="ray::ActorRolloutProcess.call", pid=7, ip="10.0.0.2",
        actor_repr="<ActorRolloutProcess>", actor_id=actor_id,
    ).as_instanceof_cause()  # fmt: skip
    assert isinstance(err, ValueError) and getattr(err, "_actor_id", None) is None

    class Group:  # what describe_failure reads of a WorkerGroup
        label = "actor_rollout"
        layouts = [{"node_ip": "10.0.0.1"}, {"node_ip": "10.0.0.2"}]

        def rank_of(self, found):
            return 1 if found == actor_id else None

    failure = describe_failure(err, {"actor_rollout": Group()})
    assert failure.where() == "worker actor_rollout rank 1 on node 10.0.0.2"
    assert failure.cause == "ValueError: bad shapes" and not failure.lost
