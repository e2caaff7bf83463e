#!/usr/bin/env bash
# The Space's CPU-trained CIFAR-10 ensemble, reproduced on a 2-core machine (BENCHMARKS.md "The CPU-trained
# ensemble"): airbench members named MODEL-seedN, each `accelerate launch train/finetune.py --model MODEL --seed N`
# under --time-limit, into RUNS (default ~/runs/cifar10-cpu); then the ensemble: the members' best/ folders copied
# to models/cifar10/ (in fp16 where their test top-1 stays the same: train/fp16_members.py), evaluated together on
# the test split (evaluation/evaluate.py --tta) into results/cifar10/, whose ensemble.json is the manifest the
# Space serves (the README's results table is written from its report).
# A member whose run folder already holds best/ and predictions.npz is skipped; one cut short continues with
# --resume latest.  MODEL-cutout-seedN trains with cutout, MODEL-muon-seedN with Muon (see member below).  All
# members share the train/val split (--split-seed 0), which the ensemble's weights, temperature and conformal rule
# are fitted on.
#
# The student: airbench_s distilled (`--teacher`) from the members' predictions.npz (their training-split
# probabilities, combined with weights and a temperature fitted on val as evaluate.py fits them) into
# RUNS/student-airbench_s; the ensemble step then evaluates it beside the members (`evaluate.py --student`)
# into models/cifar10/student/, a one-member manifest the Space serves with --manifest models/cifar10/student.
#
#   bash train/cifar10_cpu.sh                                  # members, student, then the ensemble + student
#   bash train/cifar10_cpu.sh members airbench_m-seed3         # one member
#   bash train/cifar10_cpu.sh members airbench_s-cutout-seed3  # one member, with airbench96's augmentation
#   STOP_AFTER_EPOCH=11 bash train/cifar10_cpu.sh members airbench95-seed7  # 11 of its 16 epochs; again: the rest
#   bash train/cifar10_cpu.sh ensemble "airbench_s-seed0 airbench_s-seed1"  # the ensemble of members already trained
#   bash train/cifar10_cpu.sh student                          # the student of the shipped members
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10.tar.gz}
RUNS=${RUNS:-$HOME/runs/cifar10-cpu}
MINUTES=${MINUTES:-60}
PY=${PY:-python}
SHIPPED="airbench_s-seed2 airbench96-seed10"

member() {  # member MODEL[-cutout|-muon]-seedN
  local name=$1 out="$RUNS/$1" resume=() recipe=() length=(--time-limit "$MINUTES")
  [[ $name =~ ^(airbench_[sml]|airbench9[56])(-cutout|-muon)?-seed([0-9]+)$ ]] || { echo "member $name: give MODEL[-cutout|-muon]-seedN, e.g. airbench_s-cutout-seed3" >&2; exit 2; }
  # EPOCHS fixes the schedule instead of MINUTES, as airbench95's and airbench96's recipes do (16 and 31 epochs: 66
  # minutes and 3 h 50 min with native bf16, airbench95 about 2.8 h on an AVX2 CPU; MINUTES would make them weak);
  # STOP_AFTER_EPOCH pauses it there (the same command resumes it).
  [[ ${BASH_REMATCH[1]} == airbench9[56] ]] && length=()
  [[ -n ${EPOCHS:-} ]] && length=(--epochs "$EPOCHS")
  [[ -n ${STOP_AFTER_EPOCH:-} ]] && length+=(--stop-after-epoch "$STOP_AFTER_EPOCH")
  case ${BASH_REMATCH[2]} in
    # airbench96's augmentation (4 px translation, a 12 px cutout square) against the recipe's 2 px: an hour's 30
    # epochs fit the training images (99.9% top-1) where airbench94's 10 do not.
    -cutout) recipe=(--crop-padding 4 --cutout 12) ;;
    # timm's Muon (Nesterov) for the conv and head weights, its AdamW for the biases, at the momentum of
    # airbench94_muon: the best of a GPU grid at 8 epochs (BENCHMARKS.md "Muon on the GPU").
    -muon) recipe=(--opt nmuon --lr 0.02 --lr-base-size 1024 --momentum 0.6 --weight-decay 1 --norm-bias-lr-scale 1) ;;
  esac
  if [[ -f $out/predictions.npz && -d $out/best ]]; then echo "member $name: done ($out)"; return; fi
  [[ -d $out/checkpoints ]] && resume=(--resume latest)
  "$PY" -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    train/finetune.py --model "${BASH_REMATCH[1]}" --seed "${BASH_REMATCH[3]}" --split-seed 0 "${recipe[@]}" \
    --data-dir "$DATA" "${length[@]}" --hub-repo-id "vision-ensemble/cifar10-$name" --output-dir "$out" \
    "${resume[@]}"
}

student() {  # student "MODEL-seedN ...": airbench_s distilled from those members' predictions.npz
  local out="$RUNS/student-airbench_s" resume=() teachers=()
  if [[ -f $out/predictions.npz && -d $out/best ]]; then echo "student: done ($out)"; return; fi
  [[ -d $out/checkpoints ]] && resume=(--resume latest)
  for name in $1; do teachers+=("$RUNS/$name/predictions.npz"); done
  "$PY" -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    train/finetune.py --model airbench_s --seed 0 --split-seed 0 --teacher "${teachers[@]}" --data-dir "$DATA" \
    --time-limit "$MINUTES" --hub-repo-id vision-ensemble/cifar10-student --output-dir "$out" "${resume[@]}"
}

ensemble() {  # ensemble "MODEL-seedN ...", with the student when its run has finished
  local members=() with_student=() folder name
  mkdir -p models/cifar10 results/cifar10
  for name in $1; do  # every member trained here or committed, before anything is removed
    if [[ ! -d $RUNS/$name/best && ! -d models/cifar10/$name ]]; then
      echo "member $name: neither $RUNS/$name/best nor models/cifar10/$name; train it first (members $name)" >&2
      exit 2
    fi
  done
  for folder in models/cifar10/airbench*; do  # what is no longer listed leaves the shipped folder
    [[ -e $folder && " $1 " != *" ${folder##*/} "* ]] && rm -rf "$folder" "results/cifar10/training_curves-${folder##*/}.png"
  done
  rm -rf models/cifar10/student
  [[ -f $RUNS/student-airbench_s/predictions.npz ]] && with_student=(--student "$RUNS/student-airbench_s/best")
  for name in $1; do
    members+=("models/cifar10/$name")
    if [[ -d $RUNS/$name/best ]]; then  # trained here: its best epoch replaces the shipped folder
      rm -rf "models/cifar10/$name"
      cp -r "$RUNS/$name/best" "models/cifar10/$name"
      cp "$RUNS/$name/training_curves.png" "results/cifar10/training_curves-$name.png"
    fi  # else the committed member (trained on another machine) stays as it is
  done
  "$PY" train/fp16_members.py "${members[@]}" --data-dir "$DATA"  # fp16 files where the test top-1 stays the same
  # Written beside the members, so that ensemble.json names them relative to itself; the report and its figures
  # then move to results/cifar10 (report.json stays beside the manifest too: the Space reads it there).
  "$PY" evaluation/evaluate.py --models "${members[@]}" "${with_student[@]}" --data-dir "$DATA" --tta --diagnose \
    --update-card --ood-images examples/*.jpg --output-dir models/cifar10
  mv models/cifar10/*.png results/cifar10/
  cp models/cifar10/report.json results/cifar10/report.json
  "$PY" docs/readme_results.py  # the README's results table, from that report
}

what=${1:-all}
case $what in
  members) for name in ${2:-$SHIPPED}; do member "$name"; done ;;
  ensemble) ensemble "${2:-$SHIPPED}" ;;
  student) student "${2:-$SHIPPED}" ;;
  all) for name in $SHIPPED; do member "$name"; done; student "$SHIPPED"; ensemble "$SHIPPED" ;;
  *) echo "usage: $0 [all | members|ensemble|student [MODEL-seedN ...]]" >&2; exit 2 ;;
esac
