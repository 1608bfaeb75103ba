# Sourced, not run:  PY=<python> WHEELS=<bundle folder> . bench/device_install.sh
# Installs the carry of bench/device_bundle.sh into a temporary folder, never into the machine's
# Python: every wheel with pip's --target (or, without pip, unzipped: a wheel is a zip laid out for
# site-packages), the pruned Ray archive unpacked beside them; the tokenizer archive into
# assets/llama3_tokenizer when this tree has none (the folder is git-ignored, so the device tool does
# not carry it). Then exports PYTHONPATH=<that folder>:<this tree> (the tree is not installed there:
# `common`, `bench` and `tools` import from it) and SITE=<that folder>; Ray's workers inherit both.
# Returns non-zero (and says why) when something is missing or does not install.
# Used by bench/device_run.sh on the GPU machine and by bench/device_rehearsal.sh here.
device_install() {
  local py=${PY:-python3} wheels=${WHEELS:-bench/wheels} site
  site=${SITE:-$(mktemp -d /tmp/odpo_site.XXXXXX)}
  ls "$wheels"/*.whl "$wheels"/ray-*-pruned.tar.xz >/dev/null ||
    { echo "device_install: no bundle in $wheels: run bench/device_bundle.sh here and carry it" >&2; return 2; }
  if "$py" -m pip --version >/dev/null 2>&1; then
    "$py" -m pip install -q --disable-pip-version-check --no-deps --no-index --no-compile --target "$site" "$wheels"/*.whl ||
      return 2
  else
    "$py" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' "$site" "$wheels"/*.whl ||
      return 2
  fi
  # Python's tarfile: no xz program needed there
  "$py" -c 'import sys, tarfile; [tarfile.open(a).extractall(sys.argv[1], filter="tar") for a in sys.argv[2:]]' \
    "$site" "$wheels"/ray-*-pruned.tar.xz || return 2
  # compiled now, on every core: otherwise each of Ray's processes compiles what it imports on its first
  # start, and Ray's raylet gives its agents 15 s to come up
  "$py" -m compileall -q -j 0 "$site" >/dev/null || return 2
  if [ ! -f assets/llama3_tokenizer/tokenizer.json ] && [ -f "$wheels/llama3_tokenizer.tar.xz" ]; then
    mkdir -p assets
    "$py" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
      "$wheels/llama3_tokenizer.tar.xz" assets || return 2
  fi
  export SITE=$site
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  "$py" -c 'import ray, megatron.core, omegaconf, trl; print("device_install:", ray.__file__, "ray", ray.__version__,
"megatron-core", megatron.core.__version__, "omegaconf", omegaconf.__version__, "trl", trl.__version__)' || return 2
}
device_install
