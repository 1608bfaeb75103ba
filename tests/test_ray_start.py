"""common/cluster/ray_start.py and common/run/launch.py: the private Ray instance starts on a thread, runs the
work it is given once it is up, reports that work's failure where the driver waits for it, and a
run refused by its checks after Ray started leaves no Ray process behind. Each check runs in a fresh
process (the test process keeps no Ray cluster)."""

import json
import subprocess
import sys
import time

import psutil
from conftest import ROOT


def test_work_given_to_the_ray_thread_runs_once_ray_is_up():
    code = (
        "import json, os, ray\n"
        "from common.cluster.ray_start import BackgroundRay\n"
        "background = BackgroundRay()\n"
        "background.then(lambda: (ray.is_initialized(), ray.cluster_resources()['CPU']))\n"
        "background.settle()\n"
        "up, cpus = background.wait()\n"
        "print(json.dumps({'up': up, 'cpus': cpus, 'cpu_count': os.cpu_count()}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"up": True, "cpus": out["cpu_count"], "cpu_count": out["cpu_count"]}


def test_a_failure_of_that_work_is_raised_where_the_driver_waits():
    code = (
        "from common.cluster.ray_start import BackgroundRay\n"
        "background = BackgroundRay()\n"
        "background.then(lambda: 1 / 0)\n"
        "background.settle()  # returns: the failure is for wait()\n"
        "print('settled', flush=True)\n"
        "background.wait()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "settled" in proc.stdout
    assert proc.stderr.rstrip().endswith("ZeroDivisionError: division by zero"), proc.stderr[-2000:]


def ray_processes_since(start: float) -> list[str]:
    found = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["create_time"] >= start and ("raylet" in cmd or "gcs_server" in cmd or cmd.startswith("ray::")):
            found.append(cmd[:120])
    return found


def test_a_run_refused_after_ray_started_says_why_and_leaves_no_ray_process(tmp_path):
    """``./run.sh`` starts the private instance before the config is even read; a bad input is still
    refused with one message, no run folder, and Ray shut down when the process ends."""
    start = time.time()
    proc = subprocess.run(
        [str(ROOT / "run.sh"), "tiny", "--out", str(tmp_path / "run"), f"actor_rollout_ref.actor_rollout.data_path={tmp_path / 'none.jsonl'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.startswith("error: ") and "none.jsonl" in proc.stderr and "Traceback" not in proc.stderr, (
        proc.stderr[-3000:]
    )
    assert not (tmp_path / "run").exists()
    deadline = time.time() + 10  # processes killed at exit may take a moment to go
    while ray_processes_since(start) and time.time() < deadline:
        time.sleep(0.5)
    assert ray_processes_since(start) == []
