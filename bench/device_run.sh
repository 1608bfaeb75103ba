#!/usr/bin/env bash
# The GPU machine's run of issue #30, in one call of the device tool (at most ~9 minutes): the carry
# of bench/device_bundle.sh installed into a temporary folder (bench/device_install.sh; never into the
# machine's Python), then, each part with its own time limit so that a slow one cannot cost an
# earlier one its output, and no part past the call's budget:
#   loop   ./run.sh llama32_1b --overlay one_gpu through Ray (a private instance, the GPU one of its
#          resources): the recipe's model at full size, random init, bf16, every role on the one GPU,
#          12 iterations, a checkpoint at 10 and final/ (limit 280 s). Brought back: metrics.jsonl,
#          placement.json, config.yaml, loss.png and the log (loop.log); the run folder itself (a
#          checkpoint of the 1B actor is ~17 GB) stays in /tmp there;
#   check  bench/device_check.py (one process, no Ray) with the fused kernels training uses: every
#          phase, the second DPO step (train2) included (limit 150 s);
#   trl    bench/vs_trl.py --device $DEVICE --workload one_gpu --scale $SCALE: TRL 1.16's
#          OnlineDPOTrainer on the same GPU, model shape, prompts, sampling, batch and dtype, read
#          from the same config + overlay (TRL_ITERS iterations: 6 at full size, 3 at toy size;
#          limit 300 s). This project's side is the loop part's run of this call (its first
#          TRL_ITERS iterations, its config.yaml checked against the workload) when it has that
#          many, else vs_trl runs ./run.sh for it. Brought back: vs_trl.md (per-phase totals over
#          iterations 3-N, the ratio, tokens/s, the GPU's name, TRL's peak GPU memory, the commit),
#          vs_trl.png and vs_trl.log (TRL's rows, vs_trl_trl_rows.jsonl, when no report came);
#   tiny   ./run.sh tiny for 3 iterations (not by default: the rehearsal's first, quickest loop).
# environment.txt gets the versions, nvidia-smi and Ray's view of the machine's resources first.
#
# Budget on a GPU (BUDGET=520 s from the script's start, inside the tool's timeout_s=540): install and
# environment ~60 s (estimated), loop <= 280 s, check <= 150 s, trl <= 300 s (estimated ~90 s: TRL's
# side alone, importing TRL and building its three 1.24B models on the GPU, then 6 iterations of HF
# generation of 8 x 256 tokens, reference, reward and step). Each part's limit is its own or what is
# left of BUDGET less 10 s, whichever is less; a part with under 45 s left is skipped (exit status
# 124, noted in environment.txt). None of these times has been measured on a GPU yet. On CPU
# (the rehearsal) BUDGET is unlimited unless set.
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
RUNS=${RUNS:-loop check trl}
PACK=${PACK:-auto}
BUDGET=${BUDGET:-$([ "$DEVICE" = cpu ] && echo 1000000 || echo 520)}  # seconds for the whole call
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

# a part's time limit: $1 (its own), or what is left of BUDGET less 10 s to pack up, whichever is less
part_limit() {
  local left=$((BUDGET - ($(date +%s) - start) - 10))
  echo $((left < $1 ? left : $1))
}

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
  full) loop_args=(llama32_1b --overlay one_gpu) trl_iters=6 ;;
  # the same overlay, its model at toy size in fp32 on the device (CPU here), 3 iterations, a checkpoint at 2
  toy) loop_args=(llama32_1b --overlay one_gpu "training.device=$DEVICE" training.dtype=fp32 training.train_iters=3
    training.save_interval=2 model.num_layers=2 model.hidden_size=64 model.ffn_hidden_size=256
    model.num_attention_heads=4 model.num_query_groups=2) trl_iters=3 ;;
  *) echo "SCALE: full or toy" >&2; exit 2 ;;
esac

# the trl part: TRL beside this project on the one_gpu workload; $1 time limit. This project's side is
# the loop part's run when it has the iterations (vs_trl checks its config.yaml), else vs_trl runs it
trl_part() {
  local limit=$1 iters=${TRL_ITERS:-$trl_iters} rc ours=()
  if [ -f "$OUT/loop_metrics.jsonl" ] && [ "$(grep -c . "$OUT/loop_metrics.jsonl")" -ge "$iters" ]; then
    ours=(--ours-metrics "$OUT/loop_metrics.jsonl" --ours-config "$OUT/loop_config.yaml")
  fi
  timeout "$limit" "$PY" bench/vs_trl.py --device "$DEVICE" --workload one_gpu --scale "$SCALE" --iters "$iters" \
    --fresh ${ours[@]+"${ours[@]}"} --out "$WORK/vs_trl" --report "$OUT/vs_trl.md" --plot "$OUT/vs_trl.png" 2>&1 | tee "$OUT/vs_trl.log"
  rc=${PIPESTATUS[0]}
  [ -f "$OUT/vs_trl.md" ] || cp "$WORK/vs_trl/trl_rows.jsonl" "$OUT/vs_trl_trl_rows.jsonl" 2>/dev/null
  echo "trl: exit $rc (124 = timed out after ${limit}s)" | tee -a "$OUT/environment.txt"
  return "$rc"
}

declare -A own_limit=([tiny]=300 [loop]=280 [check]=150 [trl]=${TRL_LIMIT:-300})
rc_all=0
for part in $RUNS; do
  [ -n "${own_limit[$part]:-}" ] || { echo "RUNS: unknown part '$part' (loop, check, trl, tiny)" >&2; exit 2; }
  limit=$(part_limit "${own_limit[$part]}")
  if [ "$limit" -lt 45 ]; then
    echo "$part: skipped: ${limit}s left of BUDGET=${BUDGET}s" | tee -a "$OUT/environment.txt"
    rc_all=124
    continue
  fi
  case $part in
    tiny) loop_part tiny "$limit" tiny training.train_iters=3 "training.device=$DEVICE" ;;
    loop) loop_part loop "$limit" "${loop_args[@]}" ;;
    check)
      timeout "$limit" "$PY" bench/device_check.py --device "$DEVICE" --scale "$SCALE" --fusions device \
        --out "$OUT/device_check.json" 2>&1 | tee "$OUT/device_check.log"
      rc=${PIPESTATUS[0]}
      echo "check: exit $rc (124 = timed out after ${limit}s)" | tee -a "$OUT/environment.txt"
      [ "$rc" -eq 0 ] ;;
    trl) trl_part "$limit" ;;
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
