"""common/device/lazy_compile.py: a process that never compiles never imports torch._dynamo, and what runs
is what torch would run. Each check runs in a fresh interpreter (this one has imported everything)."""

import json
import subprocess
import sys

from conftest import ROOT

STEPS = """
import json, sys
import common, megatron.core, torch
{first}
from megatron.core.fusions.fused_bias_swiglu import bias_swiglu_impl  # noqa: F401 (wrapped in torch.compile at import)
from megatron.core.jit import jit_fuser
fused = jit_fuser(lambda x: x * 2)
torch.manual_seed(0)
layer = torch.nn.Linear(4, 4)
opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.01)  # Megatron-core's CPU optimizer
for _ in range(3):
    layer(torch.randn(2, 4)).square().sum().backward()
    opt.step(); opt.zero_grad()
    grad_mode_after_step = torch.is_grad_enabled()
state = opt.state_dict(); opt.load_state_dict(state)
plain = torch.optim.Optimizer.zero_grad.__dynamo_decorated__.__wrapped__
print(json.dumps({{"dynamo": "torch._dynamo" in sys.modules, "deferred": hasattr(fused, "__wrapped_uncompiled__"),
                  "grads_cleared": all(p.grad is None for p in layer.parameters()), "steps": float(state["state"][0]["step"]),
                  "grad_mode_after_step": grad_mode_after_step, "weights": layer.weight.flatten().tolist(),
                  "torch_decorator_ran": getattr(plain, "__dynamo_disable", None) is not None}}))
"""


def fresh(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_megatron_and_adamw_steps_leave_the_compiler_unimported_and_compute_what_torch_does():
    lazy = fresh(STEPS.format(first=""))
    assert {k: lazy[k] for k in ("dynamo", "deferred", "grads_cleared", "steps", "grad_mode_after_step", "torch_decorator_ran")} == {
        "dynamo": False, "deferred": True, "grads_cleared": True, "steps": 3.0, "grad_mode_after_step": True, "torch_decorator_ran": False,
    }  # fmt: skip
    # with torch._dynamo imported first, torch's own decorated methods run: the same weights, bit for bit
    torchs = fresh(STEPS.format(first="import torch._dynamo"))
    assert torchs["dynamo"] and torchs["torch_decorator_ran"]
    assert torchs["weights"] == lazy["weights"]


ORDERS = {
    "common first": "import common\nbefore = 'torch' in sys.modules\nimport torch",
    "torch first": "import torch\nbefore = True\nimport common",
    "megatron first": "import common\nbefore = 'torch' in sys.modules\nimport megatron.core, torch",
}


def test_importing_common_imports_no_torch_and_torch_s_compile_is_lazy_whoever_imports_it():
    """``import common`` stays light (./run.sh starts Ray before torch loads: common/run/launch.py); the
    lazy ``torch.compile`` is in place as soon as torch's own import ends, before Megatron's code runs."""
    for order, code in ORDERS.items():
        out = fresh(
            f"import json, sys\n{code}\nimport common.device.lazy_compile as lc\nprint(json.dumps({{'before': before, 'lazy': torch.compile is lc.lazy_compile}}))"
        )
        assert out == {"before": order == "torch first", "lazy": True}, order
