#!/usr/bin/env bash
# Create (or update) the project's virtual environment from nothing:
#   .venv with Python 3.11, the pinned requirements, and fsmde_ros installed
#   in editable mode (so `fsmde` and `surround_depth_node` are on PATH).
# Idempotent: re-running only installs what changed (pip decides).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY=$cand; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "setup_env: need Python 3.11 (torch 2.13.0 CPU wheel and ROS Kilted wheels are cp311)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
stamp=.venv/.fsmde-requirements.sha
want=$(cat requirements.txt requirements-ros.txt requirements-dev.txt setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python -m pip install --quiet -r requirements-dev.txt
  python -m pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi
echo "setup_env: ready ($(python --version), torch $(python -c 'import torch; print(torch.__version__)'))"
