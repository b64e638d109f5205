#!/usr/bin/env bash
# Submit a t5pipe command to a SLURM GPU cluster: N nodes x G GPUs, one process per GPU.
#
#   launch/slurm/submit.sh --nodes=4 --partition=gpu --venv=$HOME/t5pipe-venv \
#       --model_dir=/shared/runs/ft1 -- train --gin_file=runs/finetune.gin \
#       --gin_file=models/t5_1_1/base.gin --gin.MIXTURE_OR_TASK_NAME=glue_v002_proportional
#
# One process per GPU (srun --ntasks-per-node=G): this is what JAX's SLURM detection
# expects. Each process calls jax.distributed.initialize() with no arguments (t5pipe does
# that when SLURM_NTASKS > 1), which reads SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and
# uses the GPU numbered SLURM_LOCALID. So GPUs must not be bound per task: every task
# sees all G GPUs of its node (no --gpus-per-task).
# shellcheck disable=SC2153  # upper-case settings are assigned by flag() in common.sh
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

DESCRIPTION="Submit launch/slurm/train.sbatch: the t5pipe command on N nodes x G GPUs."
USAGE_ARGS="-- COMMAND [t5pipe flags]"
flag nodes 1 "number of nodes"
flag gpus_per_node 8 "GPUs per node (= processes per node)"
flag partition "" "SLURM partition"
flag account "" "SLURM account"
flag time "" "time limit, e.g. 24:00:00"
flag job_name t5pipe "job name"
flag log_dir "$PWD/slurm-logs" "logs: LOG_DIR/NAME-JOBID.sbatch.log and LOG_DIR/JOBID/task-N.log per process (a folder all nodes see)"
flag venv "" "virtual environment with t5pipe installed, activated on every node"
flag model_dir "" "where checkpoints and metrics go; exported as MODEL_DIR"
multi env "NAME=VALUE exported to every process (no commas)"
switch dry_run "print the sbatch command instead of running it"
parse_flags "$@"
check_t5pipe_args
add_model_dir_binding
check_env_pairs "${ENV[@]}"
for setting in NODES GPUS_PER_NODE; do
  [[ ${!setting} =~ ^[1-9][0-9]*$ ]] || die "--${setting,,}=${!setting} is not a positive integer"
done

exports=(ALL "T5PIPE_LAUNCH_DIR=$LAUNCH_DIR" "T5PIPE_LOG_DIR=$LOG_DIR")
[[ -n $VENV ]] && exports+=("T5PIPE_VENV=$VENV")
[[ -n $MODEL_DIR ]] && exports+=("MODEL_DIR=$MODEL_DIR")
exports+=("${ENV[@]}")
for pair in "${exports[@]}"; do
  # sbatch --export separates entries with commas.
  [[ $pair != *,* ]] || die "'$pair' contains a comma, which sbatch --export cannot pass"
done
export_list=$(IFS=,; printf '%s' "${exports[*]}")

sbatch_flags=(
  "--job-name=$JOB_NAME"
  "--nodes=$NODES"
  "--ntasks-per-node=$GPUS_PER_NODE"
  "--gpus-per-node=$GPUS_PER_NODE"
  --exclusive
  "--output=$LOG_DIR/%x-%j.sbatch.log"
  "--export=$export_list"
)
[[ -n $PARTITION ]] && sbatch_flags+=("--partition=$PARTITION")
[[ -n $ACCOUNT ]] && sbatch_flags+=("--account=$ACCOUNT")
[[ -n $TIME ]] && sbatch_flags+=("--time=$TIME")

if ((!DRY_RUN)); then
  # sbatch does not create the folder of --output; a missing one loses the job's log.
  mkdir -p "$LOG_DIR"
fi
run sbatch "${sbatch_flags[@]}" "$LAUNCH_DIR/slurm/train.sbatch" "${ARGS[@]}"
