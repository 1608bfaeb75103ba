#!/usr/bin/env bash
# A rehearsal, on this CPU, of the GPU machine's run (bench/device_check.sh), with that machine's
# software: Python 3.12, the CUDA 13 build of PyTorch 2.11 (it runs on CPU too), transformers, and no
# Ray, megatron-core or omegaconf, in a throw-away virtual environment; the copied wheels installed as
# device_check.sh installs them; both of its runs at toy scale on CPU; then the same check in bf16
# (tests/_device_check_half_precision.py: Megatron's mixed-precision optimizer, fp32 main parameters).
# It catches what the GPU machine's software would break before a GPU's 15 minutes are spent on it;
# it tests nothing of CUDA itself.
#
#   PYTHON312=<a Python 3.12 interpreter> OUT=docs/device/cpu_rehearsal bash bench/device_rehearsal.sh
#
# The environment (~3 GB: PyTorch's CUDA build pulls NVIDIA's libraries) is kept in $VENV for the next time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY312=${PYTHON312:?set PYTHON312 to a Python 3.12 interpreter}
OUT=${OUT:?set OUT to the output folder}
VENV=${VENV:-/tmp/odpo_gpu_machine_venv}
TORCH=${TORCH:-2.11.0}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY312" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "torch==$TORCH" numpy packaging safetensors pyyaml transformers
fi
"$VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ("ray", "megatron", "omegaconf")))' \
  || { echo "$VENV has ray, megatron-core or omegaconf: not the GPU machine's software" >&2; exit 2; }

WHEELS=$(mktemp -d)
SITE=$(mktemp -d)
trap 'rm -rf "$WHEELS" "$SITE"' EXIT
PYVER=3.12 WHEELS="$WHEELS" bench/device_check_bundle.sh >/dev/null
mkdir -p "$OUT"
PYTHON="$VENV/bin/python" WHEELS="$WHEELS" DEVICE=cpu SCALE=toy OUT="$OUT" bash bench/device_check.sh

"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-index --target "$SITE" "$WHEELS"/*.whl
# the wheels, and the tree (not installed in $VENV) for `bench` and `common`
set +e
PYTHONPATH="$SITE:$PWD" "$VENV/bin/python" tests/_device_check_half_precision.py --device cpu --scale toy --peak-tflops 1 \
  --out "$OUT/device_check_bf16.json" 2>&1 | tee "$OUT/device_check_bf16.log"
rc=${PIPESTATUS[0]}
echo "device_check bf16 on cpu: exit $rc" | tee -a "$OUT/environment.txt"
exit "$rc"
