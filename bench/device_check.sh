#!/usr/bin/env bash
# The prepared GPU-machine run of bench/device_check.py: llama32_1b at full size, bf16, one GPU.
# One command, sized for the 15 minutes of device time a session gets (machine start included):
# the device check three times, plain (--fusions off; limit 200 s), with the fused kernels training
# uses on CUDA (--fusions device, torch.compile included; limit 180 s), and in fp16 (limit 120 s);
# a later run cannot spoil an earlier one's output. From a session with a GPU (the device tool runs this in a copy of the working tree):
#
#   bench/device_check_bundle.sh                                   # here, once: bench/wheels/ (cp312)
#   run(command="ODPO_GIT_COMMIT=<git rev-parse HEAD> bash bench/device_check.sh",
#       carry=["bench/wheels"], timeout_s=540)
#   (some of them again, if time is left:  RUNS="fused fp16" ODPO_GIT_COMMIT=... bash bench/device_check.sh)
#
# then copy $OUT's files to docs/device/ and commit them (docs/device.md).
# Installs the copied wheels into a temporary --target folder (never into the machine's Python).
# Rehearsal here with the GPU machine's software (Python 3.12, PyTorch 2.11 CUDA build, on CPU): bench/device_rehearsal.sh.
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
# the wheels, and this copy of the tree (not installed here): bench/device_check.py imports `common`,
# bench/decode_profile.py `bench.device_check`
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  date -u
  nvidia-smi 2>&1 || true
  "$PY" -c 'import sys, torch, megatron.core, omegaconf; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda); print("megatron-core", megatron.core.__version__, "omegaconf", omegaconf.__version__)'
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

# 1. plain (the record); 2. with the device's fused kernels (as training runs on CUDA); 3. fp16
# (Megatron's dynamic loss scaling, plain kernels). Not by default: "eager" (plain with eager decode
# steps instead of a CUDA graph) and "profile" (bench/decode_profile.py). RUNS="plain" (any list)
# reruns some of them; each has its own time limit, so a slow later run cannot cost an earlier one
# its output.
RUNS=${RUNS:-plain fused fp16}
rc_all=0
for run in $RUNS; do
  case $run in
    plain) fusions=off; limit=200; name=device_check; extra=() ;;
    fused) fusions=device; limit=180; name=device_check_fused; extra=() ;;
    fp16) fusions=off; limit=120; name=device_check_fp16; extra=(training.dtype=fp16) ;;
    eager) fusions=off; limit=120; name=device_check_eager; extra=(actor_rollout_ref.actor_rollout.decode=eager) ;;
    profile)  # where a decode step's time goes (bench/decode_profile.py); not part of the default runs
      timeout 150 "$PY" bench/decode_profile.py --device "$DEVICE" --scale "$SCALE" --profile-steps 6 --out "$OUT/decode_profile" 2>&1 \
        | tee "$OUT/decode_profile.log"
      rc=${PIPESTATUS[0]}; echo "decode_profile: exit $rc" | tee -a "$OUT/environment.txt"; [ "$rc" -eq 0 ] || rc_all=$rc
      continue ;;
    *) echo "RUNS: unknown run '$run' (plain, fused, fp16, eager, profile)" >&2; exit 2 ;;
  esac
  timeout "$limit" "$PY" bench/device_check.py --device "$DEVICE" --scale "$SCALE" --fusions "$fusions" \
    --out "$OUT/$name.json" "${extra[@]}" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  echo "device_check $run: exit $rc (124 = timed out after ${limit}s)" | tee -a "$OUT/environment.txt"
  [ "$rc" -eq 0 ] || rc_all=$rc
done
# the device tool brings back at most 8 files: past that, one archive of them all
if [ "$(find "$OUT" -type f | wc -l)" -gt 8 ]; then
  tar -czf "$SITE/device_check_all.tar.gz" -C "$OUT" . && rm -rf "${OUT:?}"/* && mv "$SITE/device_check_all.tar.gz" "$OUT/"
fi
exit "$rc_all"
