#!/usr/bin/env bash
# The Space's CPU-trained CIFAR-10 ensemble, reproduced on a 2-core machine (BENCHMARKS.md "The CPU-trained
# ensemble"): three airbench_s members (seeds 0, 1, 2), each `accelerate launch train/finetune.py` under
# --time-limit, into RUNS (default ~/runs/cifar10-cpu).  A member whose run folder already holds best/ and
# predictions.npz is skipped; one cut short continues with --resume latest.
#
#   bash train/cifar10_cpu.sh                 # all members
#   bash train/cifar10_cpu.sh members 1       # one member (seed 1)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10.tar.gz}
RUNS=${RUNS:-$HOME/runs/cifar10-cpu}
MINUTES=${MINUTES:-30}
PY=${PY:-python}

member() {  # member SEED
  local out="$RUNS/airbench_s-seed$1" resume=()
  if [[ -f $out/predictions.npz && -d $out/best ]]; then echo "member seed $1: done ($out)"; return; fi
  [[ -d $out/checkpoints ]] && resume=(--resume latest)
  "$PY" -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    train/finetune.py --model airbench_s --seed "$1" --data-dir "$DATA" --time-limit "$MINUTES" \
    --hub-repo-id "vision-ensemble/cifar10-airbench_s-seed$1" --output-dir "$out" "${resume[@]}"
}

what=${1:-all}
case $what in
  members|all) for seed in ${2:-0 1 2}; do member "$seed"; done ;;
  *) echo "usage: $0 [all | members [SEED]]" >&2; exit 2 ;;
esac
