#!/usr/bin/env bash
# Set up a fresh machine: a virtualenv in .venv with the pinned dependencies, and the Llama 3
# tokenizer (from the PyPI package llama-models) in assets/llama3_tokenizer. Idempotent: a second
# run only checks.
#
# Ascend NPUs (documented here, never run by this script): requirements.txt pins the CPU torch, and
# torch_npu cannot be installed on a machine without Ascend CANN (it makes `import torch` itself fail).
# On an Ascend machine, after this script:
#   1. NPU driver + firmware for the card (Ascend's installers; `npu-smi info` lists the NPUs).
#   2. CANN toolkit and the kernels package for the chip (e.g. Ascend-cann-toolkit_<ver>_linux-aarch64.run
#      --install, Ascend-cann-kernels-910b_<ver>_linux.run --install), a CANN version that the torch_npu
#      release below supports (Ascend/pytorch's README has the table), then in every shell and on every
#      node before `ray start`:  source /usr/local/Ascend/ascend-toolkit/set_env.sh
#   3. The torch_npu build for the pinned torch (torch_npu versions follow torch's):
#        .venv/bin/pip install torch-npu==<torch version, e.g. 2.13.0>  (+ its deps: pyyaml, setuptools)
#   4. Check:  .venv/bin/python -c "import torch, torch_npu; print(torch.npu.is_available(), torch.npu.device_count())"
# Then training.device=npu (or auto) runs on the NPUs; common/device/backend.py imports torch_npu and applies
# transfer_to_npu before Megatron-core is imported. `ray start ... --resources='{"NPU": 8}'` declares them.
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = "--npu-notes" ]; then  # print the Ascend steps above and stop
  sed -n '/^# Ascend NPUs/,/^# transfer_to_npu/p' setup.sh | sed 's/^# \{0,1\}//'
  exit 0
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing pinned dependencies (a few minutes on a fresh machine)"
  .venv/bin/pip install --disable-pip-version-check -q -r requirements.txt
  echo "$want" > "$stamp"
fi
# The project itself, editable (pyproject.toml): `common`, `data`, `tools`, `bench` import from this
# checkout wherever a command runs. Re-done when the checkout moved.
here=$(pwd -P)
if [ "$(cd / && "$here/.venv/bin/python" -c 'import common, pathlib; print(pathlib.Path(common.__file__).resolve().parents[1])' 2>/dev/null)" != "$here" ]; then
  echo "[setup] installing this checkout (editable)"
  .venv/bin/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
fi
.venv/bin/python -m tools.fetch_tokenizer --out assets/llama3_tokenizer
echo "[setup] ready (Ascend NPU machines: see the torch_npu steps with ./setup.sh --npu-notes)"
