#!/usr/bin/env bash
# Run the same command on every node; torchrun's c10d rendezvous on MASTER_ADDR:MASTER_PORT forms the group.
#   node 0:  NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 launch/multi_node.sh recipes/vision/config.yaml
#   node 1:  NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 launch/multi_node.sh recipes/vision/config.yaml
# output_dir must be on a file system every node sees (checkpoints are written by all ranks).
set -euo pipefail
CONFIG=${1:?usage: launch/multi_node.sh CONFIG [key=value ...]}; shift
NNODES=${NNODES:?set NNODES}
NODE_RANK=${NODE_RANK:?set NODE_RANK}
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR to node 0's address}
MASTER_PORT=${MASTER_PORT:-29400}
NGPU=${NGPU:-auto}
JOB_ID=${JOB_ID:-dtrain}
MAX_RESTARTS=${MAX_RESTARTS:-0}
exec dtrain launch --nproc-per-node "$NGPU" --nnodes "$NNODES" --node-rank "$NODE_RANK" \
    --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$JOB_ID" --max-restarts "$MAX_RESTARTS" "$CONFIG" "$@"
