#!/usr/bin/env bash
# One process, no launcher: the debugging run (one GPU if there is one, else the CPU).
#   launch/debug.sh recipes/vision/config.yaml train.max_steps=20
set -euo pipefail
CONFIG=${1:?usage: launch/debug.sh CONFIG [key=value ...]}; shift
exec dtrain run "$CONFIG" "$@"
