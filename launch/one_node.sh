#!/usr/bin/env bash
# All GPUs of this node (or 2 CPU processes over gloo without one) under torchrun.
#   NGPU=4 MAX_RESTARTS=2 launch/one_node.sh recipes/vision/config.yaml
set -euo pipefail
CONFIG=${1:?usage: launch/one_node.sh CONFIG [key=value ...]}; shift
NGPU=${NGPU:-auto}
MAX_RESTARTS=${MAX_RESTARTS:-0}
exec dtrain launch --nproc-per-node "$NGPU" --max-restarts "$MAX_RESTARTS" "$CONFIG" "$@"
