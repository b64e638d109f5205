#!/usr/bin/env bash
# Multi-host: fine-tune T5.1.1 XL on a v4-32 (4 hosts x 4 chips) or, with
# ACCELERATOR_TYPE=v5litepod-16 ZONE=us-west4-a, a v5e-16 (4 hosts x 4 chips).
# Nothing changes but the slice: every host runs the same `t5pipe train` (run.sh uses
# --worker=all), jax.distributed finds the peers by itself on TPU VMs, each host reads its
# own shard of the data and the global batch is split over all 16 chips.
# Parameters and optimizer state are sharded over the slice (FSDP: mesh (data 1, fsdp all,
# model 1)), which is what lets a 3B-parameter model train here.
#
#   export ZONE=us-central2-b TPU_NAME=t5-xl MODEL_DIR=gs://my-bucket/t5-xl-glue
#   export INITIAL_CHECKPOINT_PATH=gs://my-bucket/checkpoints/t5_1_1_xl TFDS_DATA_DIR=gs://my-bucket/tfds
#   launch/examples/multihost_v4_32.sh --dry_run
set -euo pipefail
tpu="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tpu" && pwd)"

export ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
: "${MODEL_DIR:?set MODEL_DIR to a gs:// folder (every host must reach it: local paths do not work multi-host)}"
: "${INITIAL_CHECKPOINT_PATH:?set INITIAL_CHECKPOINT_PATH to a t5pipe checkpoint of T5.1.1 XL}"
: "${TFDS_DATA_DIR:?set TFDS_DATA_DIR to a gs:// folder for TFDS datasets}"
STEPS=${STEPS:-create setup run}

for step in $STEPS; do
  case $step in
    create) "$tpu/create.sh" "$@" ;;
    setup) "$tpu/setup.sh" "$@" ;;
    run)
      "$tpu/run.sh" --model_dir="$MODEL_DIR" "$@" -- train \
        --gin_file=runs/finetune.gin \
        --gin_file=models/t5_1_1/xl.gin \
        --gin.MIXTURE_OR_TASK_NAME=glue_v002_proportional \
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 84}" \
        --gin.BATCH_SIZE=256 \
        --gin.TRAIN_STEPS=1_262_144 \
        "--gin.create_mesh.mesh_shape=(1, -1, 1)" \
        --gin.INITIAL_CHECKPOINT_PATH="$INITIAL_CHECKPOINT_PATH" \
        --tfds_data_dir="$TFDS_DATA_DIR"
      ;;
    *) echo "unknown step '$step' in STEPS (create, setup, run)" >&2 && exit 2 ;;
  esac
done
