#!/usr/bin/env bash
# Delete a TPU VM, or a queued resource together with its TPU VMs (--queued, implied by
# --num_slices > 1). What lives only on the VMs' disks (logs under ~/t5pipe-logs) goes
# with them; checkpoints in gs:// stay.
#
#   launch/tpu/delete.sh --zone=us-central2-b --tpu_name=t5
#   launch/tpu/delete.sh --zone=us-west4-a --tpu_name=t5 --queued
# shellcheck disable=SC2153  # upper-case settings are assigned by flag() in common.sh
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

DESCRIPTION="Delete a TPU VM or a queued resource (and its TPU VMs)."
tpu_flags
switch queued "the TPU was created as a queued resource: delete that (and its nodes)"
parse_flags "$@"
resolve_tpu_flags
((${#ARGS[@]} == 0)) || die "unexpected arguments after --: ${ARGS[*]}"
((NUM_SLICES > 1)) && QUEUED=1

if ((QUEUED)); then
  # --force deletes the queued resource's TPU VMs too; --quiet skips the prompt.
  run gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE" "${GCLOUD_SCOPE[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_SCOPE[@]}" --quiet
fi
