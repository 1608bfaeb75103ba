#!/usr/bin/env bash
# A rehearsal, on this CPU, of the GPU machine's run (bench/device_run.sh), with that machine's
# software, so that nothing runs there for the first time: Python 3.12, PyTorch 2.11 (the CUDA 13
# build, as there: it runs on CPU too), the versions seen there of transformers and its kin, and of the
# other packages of that machine's image (bench/device_image_packages.txt) only those the run, Ray and
# TRL import, in a throw-away virtual environment; no Ray, megatron-core, omegaconf, TRL or datasets
# (checked). Then the carry that would travel (bench/wheels/, built by bench/device_bundle.sh when
# missing) installed as there, and bench/device_run.sh at toy scale on CPU: Ray from the bundle
# (a private instance), ./run.sh tiny for 3 iterations, the one_gpu overlay of llama32_1b at toy size
# (3 iterations, a checkpoint, final/), TRL beside this project (bench/vs_trl.py, 3 iterations) and the
# device check. It tests nothing of CUDA itself.
#
#   PYTHON312=<a Python 3.12 interpreter> OUT=docs/device/cpu_rehearsal bash bench/device_rehearsal.sh
#
# The environment (~3 GB: PyTorch's CUDA build pulls NVIDIA's libraries) is kept in $VENV for the next time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY312=${PYTHON312:?set PYTHON312 to a Python 3.12 interpreter}
OUT=${OUT:?set OUT to the output folder}
VENV=${VENV:-/tmp/odpo_gpu_machine_venv}
WHEELS=${WHEELS:-bench/wheels}
# the GPU machine's versions where known (bench/device_image_packages.txt), then what Ray imports at
# start (msgpack, protobuf, requests, attrs; click and filelock come with transformers), what a run
# imports (pyarrow, matplotlib, tensorboard) and TRL's OnlineDPOTrainer (pandas, xxhash, psutil, accelerate)
MACHINE=(torch==2.11.0 numpy packaging safetensors pyyaml transformers==5.17.0 tokenizers==0.23.2 huggingface_hub==1.33.0
  msgpack protobuf requests attrs pyarrow matplotlib tensorboard pandas xxhash psutil accelerate==1.15.0)
# pulled here by newer releases than the machine's, not on its list: typer's (pydantic and its
# kin), python-dateutil's (tzdata)
PULLED=(pydantic pydantic-core annotated-types typing-inspection tzdata)

if [ ! -x "$VENV/bin/python" ]; then
  "$PY312" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${MACHINE[@]}"
fi
"$VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ("ray", "megatron", "omegaconf", "trl", "datasets")))' ||
  { echo "$VENV has ray, megatron-core, omegaconf, trl or datasets: not the GPU machine's software" >&2; exit 2; }
extra=$("$VENV/bin/pip" list --disable-pip-version-check --format=freeze 2>/dev/null | cut -d= -f1 | tr '_A-Z' '-a-z' |
  grep -vxFf <(grep -v '^#' bench/device_image_packages.txt; printf '%s\n' "${PULLED[@]}") || true)
[ -z "$extra" ] || { echo "$VENV has packages the GPU machine lacks: $extra" >&2; exit 2; }

ls "$WHEELS"/ray-*-pruned.tar.xz >/dev/null 2>&1 || WHEELS="$WHEELS" bench/device_bundle.sh
# the commit that runs, vouched for here while the tree is clean (the reports are written into it below)
if [ -z "${ODPO_GIT_COMMIT:-}" ] && [ -z "$(git status --porcelain 2>/dev/null)" ]; then
  ODPO_GIT_COMMIT=$(git rev-parse HEAD) && export ODPO_GIT_COMMIT
fi
mkdir -p "$OUT"
rm -f "$OUT"/environment.txt
{
  echo "rehearsal on $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "stand-in of the GPU machine's software ($VENV):"
  "$VENV/bin/pip" list --disable-pip-version-check --format=freeze 2>/dev/null | grep -iE '^(torch|transformers|tokenizers|huggingface.hub|numpy|accelerate|pyarrow|pandas|msgpack|protobuf)==' | tr '\n' ' '
  echo
  echo "bundle ($WHEELS, $(du -cb "$WHEELS"/*.whl "$WHEELS"/*.tar.xz | tail -1 | cut -f1) bytes):"
  (cd "$WHEELS" && ls -l -- *.whl *.tar.xz | awk '{print "  " $5, $9}')
  echo
} >"$OUT/rehearsal.txt"
cat "$OUT/rehearsal.txt"

set +e
# TRL's side on 2 shared cores: ~1 min an iteration when the machine is quiet, several when it is not
PYTHON="$VENV/bin/python" WHEELS="$WHEELS" TRL_LIMIT=${TRL_LIMIT:-1200} DEVICE=cpu SCALE=toy RUNS="${RUNS:-tiny loop trl check}" PACK=no OUT="$OUT" \
  bash bench/device_run.sh
rc=$?
echo "device_run.sh at toy scale on cpu: exit $rc" | tee -a "$OUT/rehearsal.txt"
exit "$rc"
