#!/bin/sh
# A distributed verification started the way ModelArts' PyTorch examples start training: torchrun on every
# worker, the master the first host of VC_WORKER_HOSTS.
#
#   /bin/sh ${MA_JOB_DIR}/code/launch-torchrun.sh PYTHON PROCS_PER_NODE MASTER_PORT [script arguments ...]
#
# PYTHON: the image's boot python; the script arguments go to pytorch-verification.py beside this file. Where
# torch.distributed.run does not exist (torch < 1.9) torch.distributed.launch --use_env starts the processes,
# and this says so on stderr. Every variable it reads is one ModelArts sets on each worker.
set -eu
if [ "$#" -lt 3 ]; then
    echo "usage: $0 PYTHON PROCS_PER_NODE MASTER_PORT [script arguments ...]" >&2
    exit 2
fi
python=$1
procs=$2
port=$3
shift 3
script="$(dirname "$0")/pytorch-verification.py"
master="${VC_WORKER_HOSTS%%,*}"
if "$python" -c 'import torch.distributed.run' 2>/dev/null; then
    launcher=torch.distributed.run
else
    echo "torch.distributed.run does not exist in this torch (< 1.9): starting torch.distributed.launch --use_env instead" >&2
    launcher="torch.distributed.launch --use_env"
fi
# $launcher is split on purpose: "torch.distributed.launch --use_env" is a module and its flag
# shellcheck disable=SC2086
exec "$python" -m $launcher --nnodes="$MA_NUM_HOSTS" --node_rank="$VC_TASK_INDEX" --nproc_per_node="$procs" \
    --master_addr="$master" --master_port="$port" "$script" "$@"
