#!/usr/bin/env bash
# Set up the environment from nothing and run the whole test suite (+ ruff).
# This is the README's test command and exactly what CI (.ci/run) runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
# DDS stays on loopback; each pytest worker/test picks its own ROS_DOMAIN_ID.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export MPLBACKEND=Agg
ruff check .
python -m pytest -q "$@"
