"""Issue #30 item 5: a device the machine or the Ray cluster lacks stops the run before any model is
built, with a message that says what is missing.

- ``training.device=cuda`` where torch sees no GPU: ``resolve_device`` refuses it, naming the cause
  (a torch build without CUDA, a CUDA build on a machine without an NVIDIA driver, or
  CUDA_VISIBLE_DEVICES hiding every GPU); through the real CLI, and each cause in-process.
- a Ray cluster whose nodes report no GPU (or NPU) resource: the placement plan refuses it, naming the
  resource and where it comes from; through the real CLI (this machine's private Ray instance has no
  GPU: ``resource_pool.device_resource=GPU`` asks for one), and on described nodes.
In every case no run folder is written and no role's process starts (no ``placement:`` plan printed).
"""

import os
import subprocess

import pytest
import torch
from conftest import ROOT

from common.cluster.placement import Node, plan_placement
from common.device import backend
from common.device.backend import resolve_device


def _run(tmp_path, *overrides: str) -> str:
    """``./run.sh tiny --out <tmp>/run <overrides>``: refused, cleanly, before any role's process; its output."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [str(ROOT / "run.sh"), "tiny", "--out", str(out), *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=_private_env(),
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "placement:\n" not in output and "run folder:" not in output, output[-3000:]  # no role started
    assert not out.exists(), f"run folder {out} was written"
    return output


def _private_env() -> dict:
    """./run.sh's private Ray instance of this machine (never a cluster a test session shares)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    return env


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a usable CUDA GPU")
def test_cuda_on_a_machine_without_cuda_stops_naming_what_is_missing(tmp_path):
    output = _run(tmp_path, "training.device=cuda")
    assert f"error: device: 'cuda' requested but {backend.cuda_missing()}; or set training.device=cpu" in output, output


@pytest.mark.slow
def test_ray_cluster_without_gpus_stops_naming_the_resource(tmp_path):
    output = _run(tmp_path, "resource_pool.device_resource=GPU")
    assert "error: placement: no GPU in the Ray cluster: the roles need " in output, output
    assert "none of its 1 node(s) reports any" in output and "ray start --num-gpus=N" in output, output


def _no_cuda(monkeypatch, cuda_version: str | None) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", cuda_version)


def test_torch_without_cuda(monkeypatch):
    _no_cuda(monkeypatch, None)
    with pytest.raises(ValueError, match=r"device: 'cuda' requested but this torch \(.*\) is a build without CUDA"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    "driver, message",
    [
        (False, r"built for CUDA 13.0, and this machine has no NVIDIA GPU driver"),
        (True, r"sees no usable GPU although an NVIDIA driver is loaded: check `nvidia-smi`"),
    ],
)
def test_cuda_build_without_a_usable_gpu(monkeypatch, driver, message):
    _no_cuda(monkeypatch, "13.0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: driver if p == "/proc/driver/nvidia/version" else exists(p))
    with pytest.raises(ValueError, match=message):
        resolve_device("cuda")


def test_cuda_build_with_every_gpu_hidden(monkeypatch):
    _no_cuda(monkeypatch, "13.0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(
        ValueError, match=r"sees no GPU: CUDA_VISIBLE_DEVICES='' hides them all; or set training.device=cpu"
    ):
        resolve_device("cuda")


@pytest.mark.parametrize(
    "resource, source",
    [("GPU", "ray start --num-gpus=N"), ("NPU", """ray start --resources='{"NPU": 8}'""")],
)
def test_nodes_without_the_device_resource(resource, source):
    nodes = [Node("n0", "10.0.0.1", devices=0, cpus=16), Node("n1", "10.0.0.2", devices=0, cpus=16)]
    with pytest.raises(ValueError) as e:
        plan_placement({"actor_rollout": 2, "ref": 1}, nodes, resource)
    msg = str(e.value)
    assert msg.startswith(
        f"placement: no {resource} in the Ray cluster: the roles need 3 {resource} (actor_rollout 2, ref 1)"
    )
    assert "none of its 2 node(s) reports any" in msg and source in msg, msg


def test_some_devices_is_a_shortfall_not_a_missing_resource():
    """Nodes with some GPUs, too few: the shortfall message (which role goes short), as before."""
    with pytest.raises(ValueError, match=r"need 3 GPU slots .* have 1; short by 2"):
        plan_placement({"actor_rollout": 2, "ref": 1}, [Node("n0", "10.0.0.1", devices=1, cpus=16)], "GPU")
