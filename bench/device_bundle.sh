#!/usr/bin/env bash
# The carry for a run of this project on a GPU machine of the device tool (bench/device_run.sh): what
# the run needs and that machine lacks, into bench/wheels/ (git-ignored), in one command:
#
#   bench/device_bundle.sh            # then run(..., carry=["bench/wheels"]); prints the bundle's and the tree's size
#
# The machine has Python 3.12, torch 2.11 (CUDA build) and the packages of bench/device_image_packages.txt
# (pyarrow, pandas, matplotlib, accelerate, msgpack, click, protobuf, grpcio, aiohttp, psutil, jinja2,
# transformers ...), and no network. Carried (cp312, manylinux x86_64 or pure Python):
# - Ray (the version of requirements.txt) as ray-<ver>-cp312-pruned.tar.xz: its wheel (79 MB) unpacked,
#   without what a run never imports (ray/jars, rllib, data, tune, train, serve, llm, air and the
#   dashboard's web client), its three binaries (_raylet.so, raylet, gcs_server) stripped of symbols,
#   packed with xz -9 (~18 MB; site-packages layout: ray/ and its dist-info);
# - what Ray imports at start and the machine lacks: jsonschema and its own needs (referencing,
#   jsonschema-specifications, rpds-py);
# - megatron-core 0.16.1, omegaconf 2.3.0 and its parser runtime antlr4-python3-runtime 4.9.3 (a source
#   archive only: its pure-Python wheel is built here);
# - TRL (requirements.txt's version, for bench/vs_trl.py) and what its OnlineDPOTrainer needs and the
#   machine lacks: datasets (requirements.txt's), dill, multiprocess;
# - the Llama 3 tokenizer of assets/llama3_tokenizer (git-ignored, so not in the tree that travels) as
#   llama3_tokenizer.tar.xz (1.7 MB).
# pyarrow (55 MB), pandas and matplotlib do not fit the carry (64 MiB with the working tree): the run
# and TRL use the machine's. bench/device_rehearsal.sh runs all of it here first, with a stand-in of
# the machine's software. Installed into a temporary folder there by bench/device_install.sh.
#
#   WHEELS=<folder> PIP=<pip> bench/device_bundle.sh    # elsewhere (default bench/wheels, .venv/bin/pip)
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-bench/wheels}
PIP=${PIP:-.venv/bin/pip}
LIMIT_MIB=${LIMIT_MIB:-60}
pin() { sed -n "s/^$1==\([^ #]*\).*/\1/p" requirements.txt; }
RAY=$(pin ray)
TRL=$(pin trl)
DATASETS=$(pin datasets)
MEGATRON=$(pin megatron-core)
OMEGACONF=$(pin omegaconf)
[ -n "$RAY" ] && [ -n "$TRL" ] && [ -n "$DATASETS" ] || { echo "requirements.txt pins no ray, trl or datasets" >&2; exit 2; }
# not pinned in requirements.txt: the versions the project's .venv resolved (Ray's and datasets' needs)
WHEELS_PURE=(
  "megatron-core==$MEGATRON" "omegaconf==$OMEGACONF" "trl==$TRL" "datasets==$DATASETS"
  dill==0.4.1 multiprocess==0.70.19
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
)
RAY_DROP=(jars rllib data tune train serve llm air dashboard/client)
RAY_STRIP=(_raylet.so core/src/ray/raylet/raylet core/src/ray/gcs/gcs_server)
PLATFORM=(--python-version 3.12 --implementation cp --only-binary=:all:
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$WHEELS"
rm -f "$WHEELS"/*.whl "$WHEELS"/*.tar.xz  # only what this script (or device_check_bundle.sh) writes there
[ -f assets/llama3_tokenizer/tokenizer.json ] ||
  { echo "no assets/llama3_tokenizer here: ./setup.sh (or .venv/bin/python -m tools.fetch_tokenizer --out assets/llama3_tokenizer)" >&2; exit 2; }
tar -C assets -cf - llama3_tokenizer | xz -9 >"$WHEELS/llama3_tokenizer.tar.xz"

"$PIP" download --disable-pip-version-check -q --no-deps "${PLATFORM[@]}" -d "$WHEELS" "${WHEELS_PURE[@]}"
"$PIP" wheel --disable-pip-version-check -q --no-deps -w "$WHEELS" antlr4-python3-runtime==4.9.3

# Ray: unpack, prune, strip, pack
"$PIP" download --disable-pip-version-check -q --no-deps "${PLATFORM[@]}" -d "$work" "ray==$RAY"
mkdir "$work/site"
unzip -q "$work"/ray-"$RAY"-*.whl -d "$work/site"
for d in "${RAY_DROP[@]}"; do rm -rf "${work:?}/site/ray/$d"; done
for b in "${RAY_STRIP[@]}"; do strip --strip-unneeded "$work/site/ray/$b"; done
rm -f "$work"/site/ray-"$RAY".dist-info/RECORD  # lists the removed files; nothing installs from it
echo "ray $RAY unpacked, pruned and stripped: $(du -sh "$work/site" | cut -f1)"
tar -C "$work/site" -cf - ray "ray-$RAY.dist-info" | xz -9 >"$WHEELS/ray-$RAY-cp312-pruned.tar.xz"

# nothing the machine already has (bench/device_image_packages.txt): two versions of one package on
# the path are how an install breaks
have=$(grep -v '^#' bench/device_image_packages.txt)
for f in "$WHEELS"/*.whl; do
  name=$(basename "$f" | cut -d- -f1 | tr '_A-Z' '-a-z')
  if grep -qx "$name" <<<"$have"; then echo "$f: the GPU machine has $name already" >&2; exit 2; fi
done

ls -l "$WHEELS"
bytes=$(du -cb "$WHEELS"/*.whl "$WHEELS"/*.tar.xz | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {print s}')
printf 'bundle: %.1f MiB (limit %s MiB); tracked working tree: %.1f MiB; together %.1f MiB of the 64 MiB the device tool carries\n' \
  "$(echo "$bytes / 1048576" | bc -l)" "$LIMIT_MIB" "$(echo "$tree / 1048576" | bc -l)" "$(echo "($bytes + $tree) / 1048576" | bc -l)"
[ "$bytes" -le $((LIMIT_MIB * 1048576)) ] || { echo "bundle over ${LIMIT_MIB} MiB" >&2; exit 1; }
