#!/usr/bin/env bash
# Run the same t5pipe command on every worker of a TPU VM slice (a multi-host program:
# every host runs it, JAX finds its peers), each writing its own log:
#
#   ~/t5pipe-logs/RUN_NAME/worker-N/COMMAND.log   (and .../pid; ~/t5pipe-logs/latest -> RUN_NAME)
#
# The job runs detached (it survives the ssh session); follow it with logs.sh, end it with
# stop.sh. --foreground streams the output instead. TPU_NAME, MODEL_DIR and each --env
# NAME=VALUE are exported to the command; `train` without --gin.MODEL_DIR gets MODEL_DIR.
#
#   launch/tpu/run.sh --zone=us-central2-b --tpu_name=t5 --model_dir=gs://bucket/run1 -- \
#       train --gin_file=runs/finetune.gin --gin_file=models/t5_1_1/base.gin \
#       --gin.MIXTURE_OR_TASK_NAME=glue_v002_proportional
# shellcheck disable=SC2153  # upper-case settings are assigned by flag() in common.sh
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

DESCRIPTION="Run a t5pipe command on all workers of a TPU VM slice, with a log per worker."
USAGE_ARGS="-- COMMAND [t5pipe flags]"
tpu_flags
flag model_dir "" "where checkpoints and metrics go (gs://bucket/path); exported as MODEL_DIR"
flag worker all "which workers: all (a multi-host program needs all) or an index"
flag run_name "" "log folder name (default: COMMAND-YYYYmmdd-HHMMSS, UTC)"
flag remote_dir t5pipe "the installed checkout on each worker (relative to the home folder)"
flag venv_dir t5pipe-venv "virtual environment on each worker (relative to the home folder)"
flag log_root t5pipe-logs "log folder on each worker (relative to the home folder)"
multi env "NAME=VALUE exported to the command on every worker (e.g. TFDS_DATA_DIR=gs://...)"
switch foreground "stream the output and wait for the command instead of detaching"
parse_flags "$@"
resolve_tpu_flags
check_t5pipe_args
add_model_dir_binding
check_env_pairs "${ENV[@]}"
[[ $WORKER == all || $WORKER =~ ^[0-9]+$ ]] || die "--worker=$WORKER: expected all or a worker index"
RUN_NAME=${RUN_NAME:-${ARGS[0]}-$(date -u +%Y%m%d-%H%M%S)}
[[ $RUN_NAME =~ ^[A-Za-z0-9_.-]+$ ]] || die "--run_name=$RUN_NAME: use letters, digits, . _ -"

exports=("TPU_NAME=$TPU_NAME")
[[ -n $MODEL_DIR ]] && exports+=("MODEL_DIR=$MODEL_DIR")
exports+=("${ENV[@]}")

# shellcheck disable=SC2016  # expanded on the worker, not here
if ((NUM_SLICES > 1)); then
  worker_id='$(hostname)' # unique across slices; worker numbers repeat in each slice
else
  worker_id='worker-$(curl -sf --max-time 5 -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)'
fi
log_root=$(shell_quote "$LOG_ROOT")
log_file="\"\$log_dir\"/${ARGS[0]}.log"
command=$(shell_quote t5pipe "${ARGS[@]}")

steps=(
  "set -e"
  "source ~/$(shell_quote "$VENV_DIR")/bin/activate"
  "export $(shell_quote "${exports[@]}")"
  "log_dir=\"\$HOME\"/$log_root/$RUN_NAME/$worker_id"
  "mkdir -p \"\$log_dir\""
  "ln -sfn $RUN_NAME ~/$log_root/latest"
  "cd ~/$(shell_quote "$REMOTE_DIR")"
)
if ((FOREGROUND)); then
  steps+=(
    "set -o pipefail"
    "$command 2>&1 | tee $log_file"
  )
else
  # setsid: its own session, so that it outlives ssh and stop.sh can end its process group.
  steps+=(
    "setsid nohup $command >$log_file 2>&1 </dev/null &"
    "echo \$! >\"\$log_dir\"/pid"
    "echo \"\$(hostname): started ${ARGS[0]} (pid \$!), log \$log_dir/${ARGS[0]}.log\""
  )
fi
tpu_ssh "$WORKER" "$(join_steps "${steps[@]}")"
