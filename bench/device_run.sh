#!/usr/bin/env bash
# The GPU machine's run of issue #30, in one call of the device tool (at most ~9 minutes): the carry
# of bench/device_bundle.sh installed into a temporary folder (bench/device_install.sh; never into the
# machine's Python), then, each part with its own time limit so that a slow one cannot cost an
# earlier one its output:
#   loop   ./run.sh llama32_1b --overlay one_gpu through Ray (a private instance, the GPU one of its
#          resources): the recipe's model at full size, random init, bf16, every role on the one GPU,
#          12 iterations, a checkpoint at 10 and final/ (limit 280 s). Brought back: metrics.jsonl,
#          placement.json, config.yaml, loss.png and the log (loop.log); the run folder itself (a
#          checkpoint of the 1B actor is ~17 GB) stays in /tmp there;
#   check  bench/device_check.py (one process, no Ray) with the fused kernels training uses: every
#          phase, the second DPO step (train2) included (limit 150 s);
#   trl    bench/vs_trl.py, TRL's OnlineDPOTrainer beside this project (CPU only until vs_trl.py has a
#          device option, issue #30 item 4; here it runs at the BENCH CONFIG's scale);
#   tiny   ./run.sh tiny for 3 iterations (not by default: the rehearsal's first, quickest loop).
# environment.txt gets the versions, nvidia-smi and Ray's view of the machine's resources first.
#
#   bench/device_bundle.sh                                                      # here, once: bench/wheels/
#   run(command="ODPO_GIT_COMMIT=<git rev-parse HEAD> bash bench/device_run.sh", carry=["bench/wheels"], timeout_s=540)
#   (a part again, if time is left:  RUNS=check ODPO_GIT_COMMIT=... bash bench/device_run.sh)
#
# More than 8 files in $OUT (what the device tool brings back) are packed into one archive.
# Rehearsed here at toy scale on CPU with the GPU machine's software: bench/device_rehearsal.sh, which
# runs this script with PYTHON=<that venv's python> DEVICE=cpu SCALE=toy RUNS="tiny loop trl check" PACK=no.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=$(command -v "${PYTHON:-python3}") || { echo "no interpreter ${PYTHON:-python3}" >&2; exit 2; }
DEVICE=${DEVICE:-cuda}
SCALE=${SCALE:-full}
RUNS=${RUNS:-loop check}
PACK=${PACK:-auto}
OUT=${OUT:?set OUT to the output folder (the device tool sets it)}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/odpo_device_run.XXXXXX)  # run folders: not under $OUT
SITE=$(mktemp -d /tmp/odpo_site.XXXXXX)
trap 'rm -rf "$WORK" "$SITE"' EXIT
export PYTHONUNBUFFERED=1 ODPO_PYTHON=$PY TRL_EXPERIMENTAL_SILENCE=1

start=$(date +%s)
PY=$PY SITE=$SITE . bench/device_install.sh 2>&1 | tee "$OUT/install.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "install failed (install.log)" >&2; exit 2; }
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"  # what device_install exported (a pipeline ran it in a subshell)
rm -f "$OUT/install.log"
echo "installed in $(($(date +%s) - start)) s"

{
  date -u
  echo "commit: ${ODPO_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)} (ODPO_GIT_COMMIT; the device tool's .git may be another commit's)"
  echo "device=$DEVICE scale=$SCALE runs=$RUNS; python $PY"
  nvidia-smi 2>&1 | head -20 || true
  timeout 120 "$PY" - <<'EOF' 2>&1  # Ray's start included: a hang must not cost the call
import sys, torch, megatron.core, omegaconf, ray, transformers
print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("megatron-core", megatron.core.__version__, "omegaconf", omegaconf.__version__, "ray", ray.__version__,
      "(" + ray.__file__ + ")", "transformers", transformers.__version__)
for name in ("trl", "datasets", "accelerate", "pyarrow", "pandas"):
    try:
        print(name, __import__(name).__version__)
    except Exception as e:  # noqa: BLE001 - reported, not fatal here
        print(name, "missing:", e)
ray.init(address="local", include_dashboard=False, logging_level="error")
print("ray private instance resources:", {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")})
ray.shutdown()
EOF
} >>"$OUT/environment.txt"
cat "$OUT/environment.txt"

# ./run.sh's part: $1 name, $2 time limit, the rest run.sh's arguments; its run folder's small files into $OUT
loop_part() {
  local name=$1 limit=$2 rc
  shift 2
  timeout "$limit" ./run.sh "$@" --out "$WORK/$name" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  for f in metrics.jsonl placement.json config.yaml loss.png; do
    [ -f "$WORK/$name/$f" ] && cp "$WORK/$name/$f" "$OUT/${name}_$f"
  done
  { echo "--- run folder:"; (cd "$WORK/$name" 2>/dev/null && du -sh -- * 2>/dev/null); } >>"$OUT/$name.log"
  rm -rf "${WORK:?}/$name"  # a checkpoint of the 1B actor is ~17 GB
  echo "$name: exit $rc (124 = timed out after ${limit}s)" | tee -a "$OUT/environment.txt"
  return "$rc"
}

case $SCALE in
  full) loop_args=(llama32_1b --overlay one_gpu) ;;
  # the same overlay, its model at toy size in fp32 on the device (CPU here), 3 iterations, a checkpoint at 2
  toy) loop_args=(llama32_1b --overlay one_gpu "training.device=$DEVICE" training.dtype=fp32 training.train_iters=3
    training.save_interval=2 model.num_layers=2 model.hidden_size=64 model.ffn_hidden_size=256
    model.num_attention_heads=4 model.num_query_groups=2) ;;
  *) echo "SCALE: full or toy" >&2; exit 2 ;;
esac

rc_all=0
for part in $RUNS; do
  case $part in
    tiny) loop_part tiny 300 tiny training.train_iters=3 "training.device=$DEVICE" ;;
    loop) loop_part loop 280 "${loop_args[@]}" ;;
    check)
      timeout 150 "$PY" bench/device_check.py --device "$DEVICE" --scale "$SCALE" --fusions device \
        --out "$OUT/device_check.json" 2>&1 | tee "$OUT/device_check.log"
      rc=${PIPESTATUS[0]}
      echo "check: exit $rc (124 = timed out after 150s)" | tee -a "$OUT/environment.txt"
      [ "$rc" -eq 0 ] ;;
    trl)
      if [ "$DEVICE" != cpu ]; then
        echo "trl: skipped: bench/vs_trl.py runs on CPU only (its device option is issue #30 item 4)" | tee -a "$OUT/environment.txt"
        continue
      fi
      timeout "${TRL_LIMIT:-420}" "$PY" bench/vs_trl.py --prompts data/prompts/smollm2_train.jsonl --iters "${TRL_ITERS:-3}" --fresh \
        --out "$WORK/vs_trl" --report "$OUT/vs_trl.md" --plot "$OUT/vs_trl.png" 2>&1 | tee "$OUT/vs_trl.log"
      rc=${PIPESTATUS[0]}
      echo "trl: exit $rc (124 = timed out after ${TRL_LIMIT:-420}s)" | tee -a "$OUT/environment.txt"
      [ "$rc" -eq 0 ] ;;
    *) echo "RUNS: unknown part '$part' (loop, check, trl, tiny)" >&2; exit 2 ;;
  esac
  rc=$?
  [ "$rc" -eq 0 ] || rc_all=$rc
done
echo "total: $(($(date +%s) - start)) s" | tee -a "$OUT/environment.txt"

# the device tool brings back at most 8 files: past that, one archive of them all
if [ "$PACK" != no ] && [ "$(find "$OUT" -type f | wc -l)" -gt 8 ]; then
  tar -czf "$WORK/device_run_all.tar.gz" -C "$OUT" . && rm -rf "${OUT:?}"/* && mv "$WORK/device_run_all.tar.gz" "$OUT/"
fi
exit "$rc_all"
