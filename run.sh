#!/usr/bin/env bash
# ./run.sh <recipe> [--nodes N] [--out DIR] [key=value ...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
recipes=$(cd "$here/recipes" && for d in */; do [ -f "$d/run.py" ] && echo "${d%/}"; done)
if [ $# -lt 1 ] || [ ! -f "$here/recipes/${1:-}/run.py" ]; then
  echo "usage: ./run.sh <recipe> [--nodes N] [--out DIR] [key=value ...]" >&2
  [ $# -ge 1 ] && echo "unknown recipe '${1}'." >&2
  echo "recipes:" $recipes >&2
  exit 2
fi
recipe=$1; shift
py="$here/.venv/bin/python"
[ -x "$py" ] || { echo "no .venv here: run ./setup.sh first" >&2; exit 2; }
exec "$py" -m common.launch "$recipe" "$@"  # Ray starts first, then recipes/$recipe/run.py (common/launch.py)
