"""Ascend NPU set-up, tested without an NPU (docs/device.md "What was verified where").

- With `torch_npu` installed, `torch_npu.contrib.transfer_to_npu` is applied before the first
  Megatron-core import, whatever module of `common` is imported first (a stand-in `torch_npu`
  package on PYTHONPATH records the order; the real one cannot be installed on a machine without
  Ascend CANN: it breaks `import torch`).
- `device=npu` without `torch_npu` stops before Ray, saying what to install.
- Each Ray worker takes the NPU Ray granted it from the `NPU` resource, with Ray told not to
  narrow ASCEND_RT_VISIBLE_DEVICES (the original system's way).
"""

import json
import os
import subprocess
import sys
import types

import pytest
from conftest import ROOT, run_recipe

STAND_IN = {
    "torch_npu/__init__.py": "import sys\nEVENTS = [('torch_npu', sorted(m for m in sys.modules if m.split('.')[0] == 'megatron'))]\n__version__ = 'stand-in'\n",
    "torch_npu/contrib/__init__.py": "",
    "torch_npu/contrib/transfer_to_npu.py": (
        "import sys\nimport torch_npu\n"
        "torch_npu.EVENTS.append(('transfer_to_npu', sorted(m for m in sys.modules if m.split('.')[0] == 'megatron')))\n"
    ),
}
PROBE = """
import json, sys, torch
import {module}
import torch_npu
print(json.dumps({{
    "events": torch_npu.EVENTS,
    "megatron_after": any(m.split('.')[0] == 'megatron' for m in sys.modules),
    "type": torch.ones(1).type(),
    "wrapped": torch.Tensor.type.__wrapped__ is not None,
}}))
"""


@pytest.mark.parametrize("module", ["common.train.schedule", "common.model.llama"])
def test_transfer_to_npu_applied_before_megatron(tmp_path, module):
    for rel, text in STAND_IN.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    names = [name for name, _ in r["events"]]
    assert names == ["torch_npu", "transfer_to_npu"]  # each imported once, in this order
    assert all(megatron == [] for _, megatron in r["events"])  # no Megatron module loaded yet at either
    assert r["megatron_after"]  # ... and the import did load Megatron afterwards
    assert r["type"] == "torch.FloatTensor" and r["wrapped"]  # Tensor.type answers 'cuda' for NPU tensors only


def test_npu_without_torch_npu_says_what_to_install():
    from common.device.backend import resolve_device

    if __import__("importlib").util.find_spec("torch_npu") is not None:
        pytest.skip("torch_npu is installed here")
    with pytest.raises(ValueError) as e:
        resolve_device("npu")
    msg = str(e.value)
    assert "torch-npu==" in msg and "CANN" in msg and "set_env.sh" in msg


def test_npu_run_stops_before_ray(tmp_path):
    if __import__("importlib").util.find_spec("torch_npu") is not None:
        pytest.skip("torch_npu is installed here")
    proc = run_recipe("tiny", tmp_path / "run", "training.device=npu")
    assert proc.returncode != 0
    assert "torch-npu==" in proc.stderr and "CANN" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # stopped before Ray: the run folder is made after ray.init


def test_ray_worker_picks_its_granted_npu(monkeypatch):
    from common.device import backend as dev

    npu = dev.Device(kind="npu", backend="hccl", ray_resource="NPU")
    cuda = dev.Device(kind="cuda", backend="nccl", ray_resource="GPU")
    for var in ("PYTORCH_NPU_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        monkeypatch.delenv(var, raising=False)
    expandable = "expandable_segments:True"
    assert npu.worker_env() == {
        "RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES": "1",
        "PYTORCH_NPU_ALLOC_CONF": expandable,
    }
    assert cuda.worker_env() == {"PYTORCH_CUDA_ALLOC_CONF": expandable}
    assert dev.resolve_device("cpu").worker_env() == {}
    monkeypatch.setenv("PYTORCH_NPU_ALLOC_CONF", "max_split_size_mb:512")  # the user's own setting wins
    assert npu.worker_env() == {"RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES": "1"}

    granted = {"NPU": ["5"]}
    context = types.SimpleNamespace(get_accelerator_ids=lambda: granted)
    fake_ray = types.SimpleNamespace(is_initialized=lambda: True, get_runtime_context=lambda: context)
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES", raising=False)
    assert dev._ray_npu_index() == 5  # every NPU visible: the physical id is the torch index
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "4,5,6,7")
    assert dev._ray_npu_index() == 1  # a user-set visible list: the id's position in it
    granted["NPU"] = []
    with pytest.raises(ValueError, match="granted no NPU"):
        dev._ray_npu_index()
