#!/usr/bin/env bash
# ./run.sh <recipe> [--nodes N] [--out DIR] [--overlay NAME] [--resume RUN_DIR] [--export-hf DIR] [key=value ...]
# ./run.sh --help: the recipes and the options (common/run/cli.py)
# ODPO_PYTHON=<interpreter> ./run.sh ...: another Python than .venv's (one whose packages, or PYTHONPATH, hold
# the project's needs: bench/device_run.sh on a GPU machine)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${ODPO_PYTHON:-$here/.venv/bin/python}"
recipes=$(cd "$here/recipes" && for d in */; do [ -f "$d/run.py" ] && echo "${d%/}"; done)
usage="usage: ./run.sh <recipe> [--nodes N] [--out DIR] [--overlay NAME] [--resume RUN_DIR] [--export-hf DIR] [key=value ...]"
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  [ -x "$py" ] && exec "$py" -m common.run.launch --help  # the recipes, with the options' help
  echo "$usage"; echo "recipes:" $recipes; echo "(run ./setup.sh first; then ./run.sh --help also explains the options)"
  exit 0
fi
if [ $# -lt 1 ] || [ ! -f "$here/recipes/${1:-}/run.py" ]; then
  echo "$usage" >&2
  [ $# -ge 1 ] && echo "unknown recipe '${1}'." >&2
  echo "recipes:" $recipes >&2
  echo "./run.sh --help: the recipes and the options" >&2
  exit 2
fi
recipe=$1; shift
[ -n "${ODPO_PYTHON:-}" ] && [ ! -x "$py" ] && { echo "ODPO_PYTHON=$py: no such interpreter" >&2; exit 2; }
[ -x "$py" ] || { echo "no .venv here: run ./setup.sh first" >&2; exit 2; }
exec "$py" -m common.run.launch "$recipe" "$@"  # Ray starts first, then recipes/$recipe/run.py (common/run/launch.py)
