#!/usr/bin/env bash
# The Space's CPU-trained CIFAR-10 ensemble, reproduced on a 2-core machine (BENCHMARKS.md "The CPU-trained
# ensemble"): airbench_s members (seeds 0, 1, 2), each `accelerate launch train/finetune.py` under
# --time-limit, into RUNS (default ~/runs/cifar10-cpu); then the ensemble: the members' best/ folders copied to
# models/cifar10/, evaluated together on the test split (evaluation/evaluate.py --tta) into results/cifar10/, whose
# ensemble.json is the manifest the Space serves (the README's results table is written from its report).  A member
# whose run folder already holds best/ and predictions.npz is skipped; one cut short continues with --resume latest.
#
#   bash train/cifar10_cpu.sh                 # members 0 1 2, then the ensemble
#   bash train/cifar10_cpu.sh members 1       # one member (seed 1)
#   bash train/cifar10_cpu.sh ensemble "0 1"  # the ensemble of members already trained
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10.tar.gz}
RUNS=${RUNS:-$HOME/runs/cifar10-cpu}
MINUTES=${MINUTES:-60}
PY=${PY:-python}

member() {  # member SEED
  local out="$RUNS/airbench_s-seed$1" resume=()
  if [[ -f $out/predictions.npz && -d $out/best ]]; then echo "member seed $1: done ($out)"; return; fi
  [[ -d $out/checkpoints ]] && resume=(--resume latest)
  "$PY" -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    train/finetune.py --model airbench_s --seed "$1" --data-dir "$DATA" --time-limit "$MINUTES" \
    --hub-repo-id "vision-ensemble/cifar10-airbench_s-seed$1" --output-dir "$out" "${resume[@]}"
}

ensemble() {  # ensemble "SEED ..."
  local members=()
  mkdir -p models/cifar10 results/cifar10
  for seed in $1; do
    members+=("models/cifar10/airbench_s-seed$seed")
    rm -rf "models/cifar10/airbench_s-seed$seed"
    cp -r "$RUNS/airbench_s-seed$seed/best" "models/cifar10/airbench_s-seed$seed"
    cp "$RUNS/airbench_s-seed$seed/training_curves.png" "results/cifar10/training_curves-airbench_s-seed$seed.png"
  done
  # Written beside the members, so that ensemble.json names them relative to itself; the report and its figures
  # then move to results/cifar10 (report.json stays beside the manifest too: the Space reads it there).
  "$PY" evaluation/evaluate.py --models "${members[@]}" --data-dir "$DATA" --tta --diagnose --update-card \
    --ood-images examples/*.jpg --output-dir models/cifar10
  mv models/cifar10/*.png results/cifar10/
  cp models/cifar10/report.json results/cifar10/report.json
  "$PY" docs/readme_results.py  # the README's results table, from that report
}

what=${1:-all}
case $what in
  members) for seed in ${2:-0 1 2}; do member "$seed"; done ;;
  ensemble) ensemble "${2:-0 1 2}" ;;
  all) for seed in 0 1 2; do member "$seed"; done; ensemble "0 1 2" ;;
  *) echo "usage: $0 [all | members [SEEDS] | ensemble [SEEDS]]" >&2; exit 2 ;;
esac
