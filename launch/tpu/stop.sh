#!/usr/bin/env bash
# Stop a run started with run.sh on every worker (SIGTERM to each worker's process group,
# from the pid files run.sh wrote). With --vm, also stop the TPU VM itself (single-host
# slices only; a stopped VM keeps its disk and is not billed for the TPU).
#
#   launch/tpu/stop.sh --zone=us-central2-b --tpu_name=t5
# shellcheck disable=SC2153  # upper-case settings are assigned by flag() in common.sh
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

DESCRIPTION="Stop a run on all workers (and, with --vm, the TPU VM)."
tpu_flags
flag run_name latest "the run to stop (default: the latest run)"
flag log_root t5pipe-logs "log folder on each worker (relative to the home folder)"
switch vm "also stop the TPU VM (gcloud compute tpus tpu-vm stop)"
parse_flags "$@"
resolve_tpu_flags
((${#ARGS[@]} == 0)) || die "unexpected arguments after --: ${ARGS[*]}"
[[ $RUN_NAME =~ ^[A-Za-z0-9_.-]+$ ]] || die "--run_name=$RUN_NAME: use letters, digits, . _ -"

# run.sh started each job with setsid, so its pid is also its process group id.
# shellcheck disable=SC2016  # expanded on the worker, not here
stop_jobs='for pid_file in ~/'"$(shell_quote "$LOG_ROOT")/$RUN_NAME"'/*/pid; do [ -f "$pid_file" ] || continue; pid=$(cat "$pid_file"); if kill -TERM -- "-$pid" 2>/dev/null; then echo "$(hostname): stopped pid $pid"; else echo "$(hostname): pid $pid was not running"; fi; rm -f "$pid_file"; done'
tpu_ssh all "$stop_jobs"

if ((VM)); then
  ((NUM_SLICES == 1)) || die "--vm: multi-slice nodes cannot be stopped; delete them (delete.sh)"
  run gcloud compute tpus tpu-vm stop "$TPU_NAME" "${GCLOUD_SCOPE[@]}"
fi
