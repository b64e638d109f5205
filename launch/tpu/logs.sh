#!/usr/bin/env bash
# Show the logs that run.sh writes on the workers: the last --tail_lines of each worker's log
# (--follow keeps streaming), for one worker or all.
#
#   launch/tpu/logs.sh --zone=us-central2-b --tpu_name=t5                 # all workers, latest run
#   launch/tpu/logs.sh --zone=us-central2-b --tpu_name=t5 --worker=0 --follow
# shellcheck disable=SC2153  # upper-case settings are assigned by flag() in common.sh
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

DESCRIPTION="Tail the per-worker logs of a run started with run.sh."
tpu_flags
flag worker all "which workers: all or an index"
flag run_name latest "the run's log folder (default: the latest run)"
flag tail_lines 100 "how many lines of each log"
flag log_root t5pipe-logs "log folder on each worker (relative to the home folder)"
switch follow "keep streaming (tail -F)"
parse_flags "$@"
resolve_tpu_flags
((${#ARGS[@]} == 0)) || die "unexpected arguments after --: ${ARGS[*]}"
[[ $WORKER == all || $WORKER =~ ^[0-9]+$ ]] || die "--worker=$WORKER: expected all or a worker index"
[[ $TAIL_LINES =~ ^[0-9]+$ ]] || die "--tail_lines=$TAIL_LINES is not a number"
[[ $RUN_NAME =~ ^[A-Za-z0-9_.-]+$ ]] || die "--run_name=$RUN_NAME: use letters, digits, . _ -"

tail_flags="-n $TAIL_LINES"
((FOLLOW)) && tail_flags+=" -F"
# tail prints a "==> FILE <==" header per file, which names the worker's folder.
tpu_ssh "$WORKER" "tail $tail_flags ~/$(shell_quote "$LOG_ROOT")/$RUN_NAME/*/*.log"
