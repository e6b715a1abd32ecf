#!/usr/bin/env bash
# Set up the environment from nothing and run the whole product end to end:
# synthetic bags -> distillation -> evaluation report -> ONNX export -> the ROS 2
# node fed by a bag replay, with pictures. Results land in demo_out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-77}
export MPLBACKEND=Agg
# camera images exceed Fast DDS's default 512 KB shared-memory segment
export FASTDDS_DEFAULT_PROFILES_FILE=${FASTDDS_DEFAULT_PROFILES_FILE:-$PWD/config/fastdds_large_shm.xml}
fsmde demo --out "${1:-demo_out}" "${@:2}"
