#!/usr/bin/env bash
# Issue 16 on a lent GPU: the whole session as ONE command of at most 9 minutes, its results under $OUT as each
# part finishes, so a command cut short still returns everything finished before the cut.
#
#   bash benchmarks/gpu_session.sh all                      # the session (BENCHMARKS.md: the exact device call)
#   bash benchmarks/gpu_session.sh extras                   # minutes left: torchvision baseline, --compile
#   bash benchmarks/gpu_session.sh rerun MODEL [options]    # minutes left: one member again, options to finetune.py
#   bash benchmarks/gpu_session.sh variants "NAME OPTIONS" ... # minutes left: a recipe's variants side by side
#   bash benchmarks/gpu_session.sh ensemble [FOLDER]        # back here, on CPU: results/cifar10/ from the files
#
# `all` runs these named steps in order (seconds from the command's start, on the H200):
#   check       0-20    versions, the carried wheels, every import of a training run; stops before GPU work
#   decode      20-40   the archive decoded once into the cache with all cores (one cache size for every member)
#   throughput  40-100  per member: synthetic-data ceiling vs this pipeline, about 10 timed steps each
#   members     100-420 the three recipes trained at the same time, three processes on the one GPU, each under
#                       `--time-limit` so that all end by MEMBERS_END_S; each packed into $OUT/MODEL.tar.gz the
#                       moment it finishes
#   student     420-510 the student (`finetune.py --teacher`, the default student model) distilled from the
#                       members' training-split probabilities in their predictions.npz, under `--time-limit` until
#                       STUDENT_END_S; packed into $OUT/student.tar.gz with its fp16 weights (about 13 MiB)
# What comes back (at most 8 files, 16 MiB each, none deeper than $OUT/a/b/file): session.log (everything, with
# versions and a timeline), throughput.jsonl, one MODEL.tar.gz per member (runs/MODEL/: metrics.jsonl,
# training_curves.png, predictions.npz, summary.json, training_args.json, train.log, best/config.json,
# best/metrics.json); student.tar.gz (the same, plus best/model.safetensors and best/README.md).
#
# Environment: OUT (required: what comes back), DATA (.data/cifar10.tar.gz), HUB_OWNER (the Hub namespace the
# members would be pushed to, default vision-ensemble), MODELS (the members), CACHE_SIZE (64: CIFAR-10 stays
# 32x32 in any cache, so one size serves every member), MEMBERS_END_S (420), STUDENT_END_S (510), MIN_LIMIT_MIN (the
# shortest --time-limit a run gets when it starts late: 1 minute, 0.25 on CPU), MEMBER_ARGS
# (more finetune.py options for every member and the student), RUNS (runs: the run folders), SITE (/tmp/site:
# carried wheels), VISION_ENSEMBLE_CACHE (/tmp/vision_ensemble_cache), GPU_SESSION_CPU=1 (dry run on a CPU with tiny settings: the same steps, every
# file that must come back), STEPS (which steps `all` runs).
set -euo pipefail
cd "$(dirname "$0")/.."

[[ ${1:-} == ensemble ]] || : "${OUT:?set OUT to the folder whose files come back (the device tool sets it)}"
OUT=${OUT:-}
CPU=${GPU_SESSION_CPU:-0}
DATA=${DATA:-.data/cifar10.tar.gz}
HUB_OWNER=${HUB_OWNER:-vision-ensemble}
MODELS=${MODELS:-seresnet50 efficientnet_b0 vit_small_patch16_224}
CACHE_SIZE=${CACHE_SIZE:-64}
RUNS=${RUNS:-runs}
SITE=${SITE:-/tmp/site}
export VISION_ENSEMBLE_CACHE=${VISION_ENSEMBLE_CACHE:-/tmp/vision_ensemble_cache}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=30  # live logs, no progress-bar flood
export TORCH_LOGS="-dynamo,-inductor" PYTHONWARNINGS=ignore
if [[ $CPU == 1 ]]; then  # tiny: a typo or a missing file costs minutes here, not on the GPU
    MIN_LIMIT_MIN=${MIN_LIMIT_MIN:-0.25}  # a run of one or two epochs shows every file
    MEMBERS_END_S=${MEMBERS_END_S:-300}
    STUDENT_END_S=${STUDENT_END_S:-$((MEMBERS_END_S + 60))}
    MEMBER_ARGS=${MEMBER_ARGS:-"--max-train-samples 32 --max-eval-samples 32 --batch-size 8 --img-size 32"}
    THROUGHPUT_ARGS=(--batch-size 4 --steps 1 --warmup 1)
    export OMP_NUM_THREADS=1
else
    MIN_LIMIT_MIN=${MIN_LIMIT_MIN:-1}
    MEMBERS_END_S=${MEMBERS_END_S:-420}
    STUDENT_END_S=${STUDENT_END_S:-510}
    MEMBER_ARGS=${MEMBER_ARGS:-}
    THROUGHPUT_ARGS=(--steps 10 --warmup 3)
    export OMP_NUM_THREADS=4  # three trainings and their data work share 16 cores
fi
mkdir -p "$RUNS" ${OUT:+"$OUT"}
LOG=${OUT:-.}/session.log

say() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$LOG"; }
logged() { "$@" 2>&1 | tee -a "$LOG"; }  # a step's output, as it comes, into session.log

check() {  # carried wheels first on the path; versions; every import; the archive (fail in seconds)
    export PYTHONPATH=.
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
        export PYTHONPATH="$SITE:."
    fi
    logged python3 - "$CPU" <<'EOF'
import platform, sys
import accelerate, numpy, timm, torch
from packaging.version import Version

gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"python {platform.python_version()}  torch {torch.__version__}  timm {timm.__version__} ({timm.__file__})  "
      f"accelerate {accelerate.__version__}  numpy {numpy.__version__}  GPU {gpu}")
if Version(timm.__version__) < Version("1.0.31"):
    sys.exit(f"timm {timm.__version__} < 1.0.31 (save_for_hf has no data_config): carry .whl, see BENCHMARKS.md")
if sys.argv[1] != "1" and not torch.cuda.is_available():
    sys.exit("no CUDA device (GPU_SESSION_CPU=1 for a CPU dry run)")
import importlib.util  # every import of a training run, in this interpreter (torch is already in)

spec = importlib.util.spec_from_file_location("finetune", "train/finetune.py")
spec.loader.exec_module(importlib.util.module_from_spec(spec))
EOF
    [[ -f $DATA ]] || { say "no $DATA: mkdir -p .data; cp ../shared/data/cifar10.tar.gz .data/; carry .data"; exit 2; }
}

decode() {  # once, with every core (the cache's worker pool), before anything is timed
    logged python3 -c "import sys; from vision_ensemble.data import load_dataset; \
d = load_dataset(sys.argv[1], cache_size=int(sys.argv[2])); print('decoded', len(d.train), len(d.val), len(d.test))" \
        "$DATA" "$CACHE_SIZE"
}

throughput() {  # throughput [train_throughput.py options]: each member alone on the GPU, one after another in
    # one process (one start, one decoded dataset on the device), results in throughput.jsonl
    # shellcheck disable=SC2086  # MODELS is a list of names
    logged python3 benchmarks/train_throughput.py --model $MODELS --data-dir "$DATA" --cache-size "$CACHE_SIZE" \
        --json "$OUT/throughput.jsonl" --paths ceiling,ours "${THROUGHPUT_ARGS[@]}" "$@" ||
        say "throughput: a model failed (its line above)"
}

summarise() {  # summarise RUN WALL_S: summary.json from metrics.jsonl (wall time, img/s mean and peak, memory)
    python3 - "$1" "$2" <<'EOF'
import json, sys
from pathlib import Path

run, wall_s = Path(sys.argv[1]), int(sys.argv[2])
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
args = json.loads((run / "training_args.json").read_text())
best = max(rows, key=lambda r: r["val_top1"])
speeds = [r["train_images_per_s"] for r in rows]
summary = {"model": args["model"], "wall_s": wall_s, "time_limit_min": args["time_limit"], "epochs": len(rows),
           "planned_epochs": args["epochs"], "best_epoch": best["epoch"], "best_val_top1": best["val_top1"],
           "final_lr": rows[-1]["lr"], "train_s": round(sum(r["epoch_time_s"] for r in rows), 1),
           "eval_s": round(sum(r.get("eval_time_s", 0) for r in rows), 1),
           "mean_images_per_s": round(sum(speeds) / len(speeds)), "peak_images_per_s": round(max(speeds)),
           "peak_gpu_memory_gib": round(max(r.get("peak_gpu_memory_gib", 0.0) for r in rows), 2),
           "batch_size": args["batch_size"], "img_size": args["img_size"]}
(run / "summary.json").write_text(json.dumps(summary, indent=1))
print("summary", json.dumps(summary))
EOF
}

pack() {  # pack NAME [FILE...]: $RUNS/NAME's small files (no weights) and FILEs into $OUT/NAME.tar.gz
    local name=$1 files=() file
    shift
    for file in metrics.jsonl training_curves.png predictions.npz summary.json training_args.json train.log \
        best/config.json best/metrics.json "$@"; do
        if [[ -f $RUNS/$name/$file ]]; then files+=("$name/$file"); fi
    done
    ((${#files[@]})) || { say "$name: nothing to pack"; return; }
    tar czf "$OUT/$name.tar.gz" -C "$RUNS" "${files[@]}"
    say "$OUT/$name.tar.gz: $(du -h "$OUT/$name.tar.gz" | cut -f1), ${#files[@]} files"
}

train_run() {  # train_run NAME [finetune.py options]: train into $RUNS/NAME, summarise and pack it; its log there
    local name=$1 run=$RUNS/$1 start=$SECONDS status=0
    shift
    rm -rf "$run" && mkdir -p "$run"
    # --no-data-check: the box has no imagehash; CIFAR-10's check runs on CPU (BENCHMARKS.md: data check)
    # shellcheck disable=SC2086  # MEMBER_ARGS is a list of options
    python3 train/finetune.py --data-dir "$DATA" --cache-size "$CACHE_SIZE" --no-data-check --output-dir "$run" \
        $MEMBER_ARGS "$@" >"$run/train.log" 2>&1 || status=$?
    say "$name: exit $status after $((SECONDS - start)) s; $(grep -m1 'epoch(s) fit' "$run/train.log" || true)"
    [[ $status == 0 ]] || tail -n 5 "$run/train.log" | tee -a "$LOG"
    if [[ -f $run/metrics.jsonl ]]; then summarise "$run" $((SECONDS - start)) | tee -a "$LOG" || true; fi
    pack "$name"
}

member() {  # member MODEL MINUTES [finetune.py options]: one of the mission's members, under a time limit
    local model=$1 minutes=$2
    shift 2
    train_run "$model" --model "$model" --hub-repo-id "$HUB_OWNER/$model-cifar10" --time-limit "$minutes" "$@"
}

variants() {  # variants "NAME OPTIONS" ...: one recipe's variants trained at the same time, each `finetune.py
    # OPTIONS` into $RUNS/NAME and packed into $OUT/NAME.tar.gz the moment it ends (at most 7: session.log is the
    # eighth file that may come back); an A/B of a recipe change in seconds of GPU time instead of CPU hours
    local spec
    for spec in "$@"; do
        # shellcheck disable=SC2086  # a spec is a name and a list of options
        train_run ${spec%% *} ${spec#* } &
    done
    wait
}

minutes_until() {  # minutes_until END_S: the time limit that ends a run started now at END_S (at least MIN_LIMIT_MIN)
    python3 -c "import sys; print(round(max(float(sys.argv[3]), (int(sys.argv[1]) - int(sys.argv[2])) / 60), 2))" \
        "$1" "$SECONDS" "$MIN_LIMIT_MIN"
}

members() {  # the members at the same time, each under the time limit that ends it by MEMBERS_END_S
    local minutes model
    minutes=$(minutes_until "$MEMBERS_END_S")
    say "members: $MODELS at the same time, --time-limit $minutes min each"
    for model in $MODELS; do
        member "$model" "$minutes" &
    done
    wait
}

student() {  # the student, distilled from the members' predictions.npz (their training-split probabilities)
    local run=$RUNS/student start=$SECONDS status=0 model teachers=()
    for model in $MODELS; do
        if [[ -f $RUNS/$model/predictions.npz ]]; then teachers+=("$RUNS/$model/predictions.npz"); fi
    done
    ((${#teachers[@]})) || { say "student: no member left a predictions.npz to learn from"; return; }
    rm -rf "$run" && mkdir -p "$run"
    # shellcheck disable=SC2086  # MEMBER_ARGS is a list of options
    python3 train/finetune.py --teacher "${teachers[@]}" --data-dir "$DATA" --cache-size "$CACHE_SIZE" \
        --no-data-check --output-dir "$run" --hub-repo-id "$HUB_OWNER/student-cifar10" \
        --time-limit "$(minutes_until "$STUDENT_END_S")" $MEMBER_ARGS >"$run/train.log" 2>&1 || status=$?
    say "student: exit $status after $((SECONDS - start)) s from ${#teachers[@]} teacher(s);" \
        "$(grep -m1 'epoch(s) fit' "$run/train.log" || true)"
    [[ $status == 0 ]] || tail -n 5 "$run/train.log" | tee -a "$LOG"
    if [[ -f $run/metrics.jsonl ]]; then summarise "$run" $((SECONDS - start)) | tee -a "$LOG" || true; fi
    pack student best/model.safetensors best/README.md
}

extras() {  # for minutes left after `all`: the torchvision baseline, then each member compiled
    throughput --paths ceiling,ours,torchvision --workers 16
    throughput --compile
}

ensemble() {  # ensemble [FOLDER]: unpack the returned MODEL.tar.gz into $RUNS, then the report into $RESULTS (CPU)
    local from=${1:-.} results=${RESULTS:-results/cifar10} archive run files=() student=()
    for archive in "$from"/*.tar.gz; do
        [[ $(basename "$archive") == student.tar.gz ]] && continue
        tar xzf "$archive" -C "$RUNS"
        run=$RUNS/$(basename "$archive" .tar.gz)
        if [[ -f $run/predictions.npz ]]; then files+=("$run/predictions.npz"); fi
    done
    ((${#files[@]})) || { echo "no MODEL.tar.gz with a predictions.npz in $from" >&2; exit 2; }
    if [[ -f $from/student.tar.gz ]]; then
        tar xzf "$from/student.tar.gz" -C "$RUNS"
        student=(--student "$RUNS/student/predictions.npz")
    fi
    python3 evaluation/evaluate.py --predictions "${files[@]}" "${student[@]}" --output-dir "$results" --tta
    if ((${#student[@]})); then  # the folder the Space serves: the student's manifest names its weights beside it
        cp -r "$RUNS/student/best" "$results/student/model"
        python3 -c "import json, sys; p = sys.argv[1]; m = json.load(open(p)); m['members'][0]['source'] = 'model'; \
json.dump(m, open(p, 'w'), indent=2)" "$results/student/ensemble.json"
    fi
    for run in "${files[@]%/predictions.npz}"; do
        mkdir -p "$results/$(basename "$run")"
        cp "$run/metrics.jsonl" "$run/training_curves.png" "$run/summary.json" "$results/$(basename "$run")/"
    done
    if [[ -f $from/throughput.jsonl ]]; then cp "$from/throughput.jsonl" "$results/"; fi
    echo "results in $results"
}

step=${1:-}
[[ -n $step ]] || { sed -n '2,9p' "$0"; exit 2; }
shift
case $step in
    all)
        STEPS=${STEPS:-"check decode throughput members student"}
        for name in $STEPS; do
            say "step $name"
            "$name"
        done
        say "done: $(cd "$OUT" && echo *)" ;;
    extras)
        check && decode && extras ;;
    variants)
        (($# >= 1 && $# <= 7)) || { echo "variants: 1 to 7 \"NAME OPTIONS\" (session.log is the 8th file back)" >&2; exit 2; }
        for spec in "$@"; do
            [[ $spec == *" "* ]] || { echo "variants: '$spec' has no options: give \"NAME OPTIONS\", e.g. \"s24 --model airbench_s --epochs 24\"" >&2; exit 2; }
        done
        check && decode && variants "$@" ;;
    rerun)
        [[ -n ${1:-} ]] || { echo "rerun MODEL [finetune.py options]" >&2; exit 2; }
        model=$1
        shift
        check && decode && member "$model" "$(minutes_until "$MEMBERS_END_S")" "$@" ;;
    ensemble)
        ensemble "$@" ;;
    *)
        echo "unknown step '$step': all, extras, rerun MODEL, variants SPEC..., ensemble" >&2
        exit 2 ;;
esac
