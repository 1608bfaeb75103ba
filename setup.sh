#!/usr/bin/env bash
# Set up a fresh machine: a virtualenv in .venv with the pinned dependencies, and the Llama 3
# tokenizer (from the PyPI package llama-models) in assets/llama3_tokenizer. Idempotent: a second
# run only checks.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing pinned dependencies (a few minutes on a fresh machine)"
  .venv/bin/pip install --disable-pip-version-check -q -r requirements.txt
  echo "$want" > "$stamp"
fi
# The project itself, editable (pyproject.toml): `common`, `data`, `tools`, `bench` import from this
# checkout wherever a command runs. Re-done when the checkout moved.
here=$(pwd -P)
if [ "$(cd / && "$here/.venv/bin/python" -c 'import common, pathlib; print(pathlib.Path(common.__file__).resolve().parents[1])' 2>/dev/null)" != "$here" ]; then
  echo "[setup] installing this checkout (editable)"
  .venv/bin/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
fi
.venv/bin/python -m tools.fetch_tokenizer --out assets/llama3_tokenizer
echo "[setup] ready"
