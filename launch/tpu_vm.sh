#!/usr/bin/env bash
# Cloud TPU VM launcher for optima_jax.
#
#   launch/tpu_vm.sh [--dry-run] create   NAME ZONE ACCELERATOR [--spot]   # e.g. v5litepod-8
#   launch/tpu_vm.sh [--dry-run] install  NAME ZONE                        # clone/copy + setup on all workers
#   launch/tpu_vm.sh [--dry-run] run      NAME ZONE CONFIG [OVERRIDES...]  # prune on all workers
#   launch/tpu_vm.sh [--dry-run] resume   NAME ZONE CONFIG [OVERRIDES...]  # same command: resumes after preemption
#   launch/tpu_vm.sh [--dry-run] collect  NAME ZONE RUN_DIR DEST           # copy the checkpoint from worker 0
#   launch/tpu_vm.sh [--dry-run] delete   NAME ZONE
#
# Environment: TPU_VERSION (runtime image, default v2-alpha-tpuv5-lite), REPO_URL (git URL to clone;
# default: copy this checkout with scp), OUTPUT_ROOT (default runs; on multi-host slices it must be a
# filesystem every worker shares, e.g. a gcsfuse or Filestore mount). Runs use --config.distributed=True,
# so every worker joins one jax.distributed job; only process 0 prints progress, Orbax writes collectively.
# Memory/time plan and mesh settings: docs/scaling.md.
set -euo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi

run() {
  if [[ $DRY -eq 1 ]]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

cmd="${1:-}"; [[ -n "$cmd" ]] || usage; shift
TPU_VERSION="${TPU_VERSION:-v2-alpha-tpuv5-lite}"
OUTPUT_ROOT="${OUTPUT_ROOT:-runs}"
REMOTE_DIR="optima_jax"

case "$cmd" in
  create)
    [[ $# -ge 3 ]] || usage
    name="$1"; zone="$2"; accel="$3"; shift 3
    extra=()
    if [[ "${1:-}" == "--spot" ]]; then extra+=(--spot); fi
    run gcloud compute tpus tpu-vm create "$name" --zone="$zone" --accelerator-type="$accel" \
      --version="$TPU_VERSION" "${extra[@]}"
    ;;
  install)
    [[ $# -ge 2 ]] || usage
    name="$1"; zone="$2"
    if [[ -n "${REPO_URL:-}" ]]; then
      run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all \
        --command="test -d $REMOTE_DIR || git clone $REPO_URL $REMOTE_DIR"
    else
      run gcloud compute tpus tpu-vm scp --recurse "$(cd "$(dirname "$0")/.." && pwd)" "$name:$REMOTE_DIR" \
        --zone="$zone" --worker=all
    fi
    run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all \
      --command="cd $REMOTE_DIR && pip install -e . 'jax[tpu]' && python -c 'import jax; print(jax.device_count())'"
    ;;
  run|resume)
    [[ $# -ge 3 ]] || usage
    name="$1"; zone="$2"; config="$3"; shift 3
    overrides="$*"
    base="$(basename "$config" .py)"
    # The same command resumes: the output directory holds per-block Orbax resume points.
    remote="cd $REMOTE_DIR && python -m optima_jax.prune --config $config --config.distributed=True"
    remote+=" --config.output_dir=$OUTPUT_ROOT/$base $overrides 2>&1 | tee -a $OUTPUT_ROOT-$base.log"
    run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="mkdir -p $OUTPUT_ROOT && $remote"
    ;;
  collect)
    [[ $# -ge 4 ]] || usage
    name="$1"; zone="$2"; run_dir="$3"; dest="$4"
    run gcloud compute tpus tpu-vm scp --recurse "$name:$REMOTE_DIR/$run_dir" "$dest" --zone="$zone" --worker=0
    ;;
  delete)
    [[ $# -ge 2 ]] || usage
    run gcloud compute tpus tpu-vm delete "$1" --zone="$2" --quiet
    ;;
  *) usage ;;
esac
