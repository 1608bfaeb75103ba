#!/usr/bin/env bash
# The prepared GPU-machine run of bench/device_check.py: llama32_1b at full size, bf16, one GPU.
# One command, sized for the 15 minutes of device time a session gets (machine start included):
# the device check twice, plain (--fusions off, ~2-3 min) then with the fused kernels training uses
# on CUDA (--fusions device, torch.compile included, ~3-4 min); the second cannot spoil the first's
# output. From a session with a GPU (the device tool runs this in a copy of the working tree):
#
#   bench/device_check_bundle.sh                                   # here, once: bench/wheels/ (cp312)
#   run(command="ODPO_GIT_COMMIT=<git rev-parse HEAD> bash bench/device_check.sh",
#       carry=["bench/wheels"], timeout_s=560)
#
# then copy $OUT's files to docs/device/ and commit them (README "Device check").
# Installs the copied wheels into a temporary --target folder (never into the machine's Python).
# Dry run here on CPU at toy scale (what tests nothing on a GPU, but catches mistakes in this script):
#   PYVER=3.11 WHEELS=/tmp/w311 bench/device_check_bundle.sh
#   PYTHON=<a python without megatron/omegaconf> WHEELS=/tmp/w311 DEVICE=cpu SCALE=toy OUT=/tmp/dry bash bench/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-bench/wheels}
DEVICE=${DEVICE:-cuda}
SCALE=${SCALE:-full}
OUT=${OUT:?set OUT to the output folder (the device tool sets it)}
mkdir -p "$OUT"
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT

ls "$WHEELS"/*.whl >/dev/null || { echo "no wheels in $WHEELS: run bench/device_check_bundle.sh and carry it" >&2; exit 2; }
if "$PY" -m pip --version >/dev/null 2>&1; then
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-index --target "$SITE" "$WHEELS"/*.whl || exit 2
else  # no pip: a wheel is a zip archive laid out for site-packages
  "$PY" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' "$SITE" "$WHEELS"/*.whl || exit 2
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

{
  date -u
  nvidia-smi 2>&1 || true
  "$PY" -c 'import sys, torch, megatron.core, omegaconf; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda); print("megatron-core", megatron.core.__version__, "omegaconf", omegaconf.__version__)'
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

# 1. plain (the record); 2. with the device's fused kernels (as training runs on CUDA)
timeout 290 "$PY" bench/device_check.py --device "$DEVICE" --scale "$SCALE" --fusions off \
  --out "$OUT/device_check.json" 2>&1 | tee "$OUT/device_check.log"
rc_plain=${PIPESTATUS[0]}
timeout 230 "$PY" bench/device_check.py --device "$DEVICE" --scale "$SCALE" --fusions device \
  --out "$OUT/device_check_fused.json" 2>&1 | tee "$OUT/device_check_fused.log"
rc_fused=${PIPESTATUS[0]}
echo "device_check: plain exit $rc_plain, fused exit $rc_fused (124 = timed out)" | tee -a "$OUT/environment.txt"
exit "$rc_plain"
