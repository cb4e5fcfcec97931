#!/usr/bin/env bash
# Creates a Cloud TPU VM slice and runs the same nifzoo training command on every
# worker (JAX multi-host SPMD). Run from your workstation with gcloud configured.
#
#   PROJECT_ID=my-proj ZONE=europe-west4-b TPU_NAME=nifzoo-v5e \
#   ACCELERATOR_TYPE=v5litepod-32 RUNTIME_VERSION=v2-alpha-tpuv5-lite \
#   BUCKET=gs://my-bucket CONFIG=configs/celeba.py:nif128 \
#   bash launch/tpu/train_pod.sh [create|setup|train|delete|all]
#
# DRY_RUN=1 prints the gcloud commands instead of running them (no gcloud needed).
# REGISTRY=gs://my-bucket/registry registers the finished run there (zoo.load(name,
# registry=REGISTRY) from any machine with `pip install "nifzoo[gcs]"`).
#
# Notes (see the Cloud TPU "Run JAX code on TPU slices" guide):
# * Every worker must run the command (--worker=all): jax.distributed.initialize()
#   on only some hosts of a slice deadlocks. The script passes --distributed.
# * The data must be prepared as ArrayRecord where every worker can read it:
#     tfds build celeb_a --data_dir=$BUCKET/tensorflow_datasets --file_format=array_record
#   (CelebA needs a manual download; see the tfds catalog page for celeb_a.)
# * The global batch (--config.batch_size) must divide by the number of chips.
# * Checkpoints, TensorBoard logs and sample PNGs go to $BUCKET/runs/<name>;
#   re-running `train` resumes from the latest checkpoint (same number of hosts).
set -euo pipefail

: "${PROJECT_ID:?set PROJECT_ID}"
: "${ZONE:?set ZONE, e.g. europe-west4-b}"
: "${TPU_NAME:?set TPU_NAME}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
: "${BUCKET:?set BUCKET, e.g. gs://my-bucket}"
CONFIG="${CONFIG:-configs/celeba.py:nif128}"
RUN_NAME="${RUN_NAME:-$(echo "${CONFIG}" | sed 's#configs/##; s#\.py:#-#; s#,#_#g')}"
REPO_URL="${REPO_URL:-https://github.com/your-org/nifzoo.git}"
BATCH="${BATCH:-256}"
REGISTER="${REGISTRY:+--register=${REGISTRY} --name=${RUN_NAME}}"

run() {  # Runs a command, or with DRY_RUN=1 prints it (shell-quoted).
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

ssh_all() {
  run gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --project="${PROJECT_ID}" \
    --zone="${ZONE}" --worker=all --command="$1"
}

create() {
  run gcloud compute tpus tpu-vm create "${TPU_NAME}" --project="${PROJECT_ID}" \
    --zone="${ZONE}" --accelerator-type="${ACCELERATOR_TYPE}" \
    --version="${RUNTIME_VERSION}"
}

setup() {  # The tpu extra: libtpu and gcsfs (gs:// without tensorflow).
  ssh_all "set -e; rm -rf nifzoo; git clone -q ${REPO_URL} nifzoo && cd nifzoo && \
    pip install -q -e '.[tpu,tensorboard]' -c constraints.txt"
}

train() {  # Every worker runs it; re-running resumes from the workdir.
  ssh_all "cd nifzoo && python3 launch/train.py --distributed \
    --config=${CONFIG} --workdir=${BUCKET}/runs/${RUN_NAME} \
    --config.data.data_dir=${BUCKET}/tensorflow_datasets \
    --config.batch_size=${BATCH} ${REGISTER} 2>&1 | tee -a train.log"
}

delete() {
  run gcloud compute tpus tpu-vm delete "${TPU_NAME}" --project="${PROJECT_ID}" \
    --zone="${ZONE}" --quiet
}

case "${1:-all}" in
  create) create ;;
  setup) setup ;;
  train) train ;;
  delete) delete ;;
  all) create; setup; train ;;
  *) echo "usage: $0 [create|setup|train|delete|all]" >&2; exit 2 ;;
esac
