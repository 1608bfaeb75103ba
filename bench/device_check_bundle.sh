#!/usr/bin/env bash
# Wheels that bench/device_check.py needs and the GPU machines lack (they have Python 3.12, torch,
# numpy, packaging, safetensors, PyYAML and transformers; no megatron-core, no omegaconf, no network),
# into bench/wheels/ (git-ignored). The device tool carries that folder:  run(..., carry=["bench/wheels"]).
#
#   bench/device_check_bundle.sh                 # cp312 wheels for the GPU machine (about 2.8 MB)
#   PYVER=3.11 WHEELS=/tmp/w311 bench/device_check_bundle.sh   # for a dry run of bench/device_check.sh here
#
# megatron-core 0.16.1 is a platform wheel (cp312, manylinux x86_64); omegaconf 2.3.0 is pure Python;
# its parser runtime antlr4-python3-runtime 4.9.3 (the exact version omegaconf 2.3 pins) is published as
# a source archive only, so its pure-Python wheel is built here. Ray is not bundled: device_check.py
# never imports it. The carry of the whole loop through Ray (pruned Ray, TRL, ...): bench/device_bundle.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
WHEELS=${WHEELS:-bench/wheels}
PIP=${PIP:-.venv/bin/pip}
mkdir -p "$WHEELS"
"$PIP" download --disable-pip-version-check -q --no-deps --python-version "$PYVER" --only-binary=:all: -d "$WHEELS" \
  megatron-core==0.16.1 omegaconf==2.3.0
"$PIP" wheel --disable-pip-version-check -q --no-deps -w "$WHEELS" antlr4-python3-runtime==4.9.3
ls -l "$WHEELS"
