#!/usr/bin/env bash
# Multi-slice: pretrain T5.1.1 large with span corruption on C4 over NUM_SLICES v5e-16
# slices joined by the data-center network (DCN). Multi-slice needs a queued resource:
# create.sh makes one with --node-count=NUM_SLICES (nodes TPU_NAME-0, TPU_NAME-1, ...),
# and setup/run/logs reach every worker of every slice through
# `gcloud compute tpus queued-resources ssh --node=all --worker=all`. A multi-slice queued
# resource puts the MEGASCALE_* settings (coordinator, slice id, number of slices) into
# each VM's TPU environment, where JAX reads them: jax.devices() spans all slices.
#
# The mesh is split in two levels: create_mesh.mesh_shape is the shape inside a slice
# (fast ICI links: FSDP here) and create_mesh.dcn_mesh_shape the shape across slices
# (slow DCN links: data parallel only, one gradient all-reduce per step).
#
#   export ZONE=us-west4-a TPU_NAME=t5-ms MODEL_DIR=gs://my-bucket/t5-large-c4 TFDS_DATA_DIR=gs://my-bucket/tfds
#   launch/examples/multislice_v5e.sh --dry_run
set -euo pipefail
tpu="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tpu" && pwd)"

export ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v5litepod-16}
export NUM_SLICES=${NUM_SLICES:-2}
: "${MODEL_DIR:?set MODEL_DIR to a gs:// folder for checkpoints and metrics}"
: "${TFDS_DATA_DIR:?set TFDS_DATA_DIR to the gs:// folder holding the prepared c4/en TFDS data}"
STEPS=${STEPS:-create setup run}

for step in $STEPS; do
  case $step in
    create) "$tpu/create.sh" --spot "$@" ;;
    setup) "$tpu/setup.sh" "$@" ;;
    run)
      "$tpu/run.sh" --model_dir="$MODEL_DIR" "$@" -- train \
        --gin_file=runs/pretrain.gin \
        --gin_file=models/t5_1_1/large.gin \
        --gin.MIXTURE_OR_TASK_NAME=c4_v220_span_corruption \
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 114}" \
        --gin.BATCH_SIZE=2048 \
        --gin.TRAIN_STEPS=524_288 \
        "--gin.create_mesh.mesh_shape=(1, -1, 1)" \
        "--gin.create_mesh.dcn_mesh_shape=($NUM_SLICES, 1, 1)" \
        --tfds_data_dir="$TFDS_DATA_DIR"
      ;;
    *) echo "unknown step '$step' in STEPS (create, setup, run)" >&2 && exit 2 ;;
  esac
done
