#!/usr/bin/env bash
# Fine-tune T5.1.1 base on the GLUE mixture on one single-host slice (v4-8 or, with
# ACCELERATOR_TYPE=v5litepod-8 ZONE=us-west4-a, a v5e-8): create the TPU VM, install
# t5pipe, start training. Checkpoints, metrics and TensorBoard events go to MODEL_DIR.
#
#   export ZONE=us-central2-b TPU_NAME=t5-ft MODEL_DIR=gs://my-bucket/t5-base-glue
#   export INITIAL_CHECKPOINT_PATH=gs://my-bucket/checkpoints/t5_1_1_base   # t5pipe convert
#   export TFDS_DATA_DIR=gs://my-bucket/tfds
#   launch/examples/finetune_v4_8.sh --dry_run      # look first
#   launch/examples/finetune_v4_8.sh                # then do it
#
# STEPS="setup run" skips creating the VM; the TPU flags (--project, --zone, --tpu_name,
# --dry_run) pass through to every step.
set -euo pipefail
tpu="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tpu" && pwd)"

export ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-8}
: "${MODEL_DIR:?set MODEL_DIR to a gs:// folder for checkpoints and metrics}"
: "${INITIAL_CHECKPOINT_PATH:?set INITIAL_CHECKPOINT_PATH to a t5pipe checkpoint of T5.1.1 base (see docs/tpu_and_clusters.md)}"
: "${TFDS_DATA_DIR:?set TFDS_DATA_DIR to a gs:// folder for TFDS datasets}"
STEPS=${STEPS:-create setup run}

for step in $STEPS; do
  case $step in
    create) "$tpu/create.sh" "$@" ;;
    setup) "$tpu/setup.sh" "$@" ;;
    run)
      "$tpu/run.sh" --model_dir="$MODEL_DIR" "$@" -- train \
        --gin_file=runs/finetune.gin \
        --gin_file=models/t5_1_1/base.gin \
        --gin.MIXTURE_OR_TASK_NAME=glue_v002_proportional \
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 84}" \
        --gin.BATCH_SIZE=128 \
        --gin.TRAIN_STEPS=1_262_144 \
        --gin.INITIAL_CHECKPOINT_PATH="$INITIAL_CHECKPOINT_PATH" \
        --tfds_data_dir="$TFDS_DATA_DIR"
      ;;
    *) echo "unknown step '$step' in STEPS (create, setup, run)" >&2 && exit 2 ;;
  esac
done
