#!/usr/bin/env bash
# Create a Cloud TPU VM slice: directly (`tpu-vm create`) or as a queued resource
# (`queued-resources create`, which waits in the queue for capacity; required for
# multi-slice). Spot / preemptible and reserved capacity are flags.
#
#   launch/tpu/create.sh --zone=us-central2-b --tpu_name=t5 --accelerator_type=v4-8
#   launch/tpu/create.sh --zone=us-west4-a --tpu_name=t5 --accelerator_type=v5litepod-16 --queued --spot
#   launch/tpu/create.sh ... --num_slices=2        # multi-slice: nodes t5-0, t5-1
#
# Words after `--` are passed to gcloud as they are (e.g. -- --network=my-net).
# shellcheck disable=SC2153  # upper-case settings are assigned by flag() in common.sh
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

DESCRIPTION="Create a Cloud TPU VM slice (or a queued resource for one or more slices)."
USAGE_ARGS="[-- extra gcloud flags]"
tpu_flags
flag accelerator_type v4-8 "TPU type: v4-8, v4-32, v5litepod-8 (alias v5e-8), v5p-8, v6e-8, ..."
flag runtime_version "" "TPU software version (default: chosen from the accelerator type)"
switch queued "create through a queued resource (waits for capacity; implied by --num_slices > 1)"
switch spot "Spot VM: cheaper, can be preempted at any time"
switch preemptible "preemptible TPU (the older Spot; tpu-vm create only, at most 24 h)"
switch reserved "use reserved capacity"
flag valid_until_duration "" "queued resource: give up if not provisioned within this (e.g. 6h)"
flag network "" "VPC network"
flag subnetwork "" "VPC subnetwork"
flag service_account "" "service account of the TPU VMs (needs read/write on your gs:// buckets)"
parse_flags "$@"
resolve_tpu_flags

default_runtime_version() { # accelerator type -> the base image for JAX on that generation
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default --runtime_version for --accelerator_type=$1; give one" ;;
  esac
}

[[ $ACCELERATOR_TYPE =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] ||
  die "--accelerator_type=$ACCELERATOR_TYPE is not TYPE-SIZE (e.g. v4-8, v5litepod-16)"
if [[ $ACCELERATOR_TYPE == v5e-* ]]; then
  # gcloud names v5e "v5litepod".
  ACCELERATOR_TYPE=v5litepod-${ACCELERATOR_TYPE#v5e-}
fi
RUNTIME_VERSION=${RUNTIME_VERSION:-$(default_runtime_version "$ACCELERATOR_TYPE")}
((SPOT && PREEMPTIBLE)) && die "--spot and --preemptible exclude each other (Spot is the newer kind)"
((NUM_SLICES > 1)) && QUEUED=1
if ((QUEUED && PREEMPTIBLE)); then
  die "queued resources take --spot, not --preemptible"
fi
[[ -z $VALID_UNTIL_DURATION ]] || ((QUEUED)) || die "--valid_until_duration needs --queued"

common=("--accelerator-type=$ACCELERATOR_TYPE")
[[ -n $NETWORK ]] && common+=("--network=$NETWORK")
[[ -n $SUBNETWORK ]] && common+=("--subnetwork=$SUBNETWORK")
[[ -n $SERVICE_ACCOUNT ]] && common+=("--service-account=$SERVICE_ACCOUNT")
((SPOT)) && common+=(--spot)
((RESERVED)) && common+=(--reserved)

if ((QUEUED)); then
  if ((NUM_SLICES > 1)); then
    nodes=("--node-count=$NUM_SLICES" "--node-prefix=$TPU_NAME")
  else
    nodes=("--node-id=$TPU_NAME")
  fi
  [[ -n $VALID_UNTIL_DURATION ]] && common+=("--valid-until-duration=$VALID_UNTIL_DURATION")
  run gcloud compute tpus queued-resources create "$QUEUED_RESOURCE" "${GCLOUD_SCOPE[@]}" \
    "${nodes[@]}" "--runtime-version=$RUNTIME_VERSION" "${common[@]}" "${ARGS[@]}"
  echo "# queued; it is ready when its state is ACTIVE:" >&2
  echo "#   gcloud compute tpus queued-resources describe $QUEUED_RESOURCE ${GCLOUD_SCOPE[*]}" >&2
else
  ((PREEMPTIBLE)) && common+=(--preemptible)
  run gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_SCOPE[@]}" \
    "--version=$RUNTIME_VERSION" "${common[@]}" "${ARGS[@]}"
fi
