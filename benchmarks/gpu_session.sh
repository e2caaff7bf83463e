#!/usr/bin/env bash
# Issue 9 on a lent GPU: one step per call of the device tool, from the working tree, results under $OUT.
#
#   bash benchmarks/gpu_session.sh smoke                  # every step tiny (~2-3 min): run it first
#   bash benchmarks/gpu_session.sh throughput             # train-step img/s, eager and --compile, each member
#   bash benchmarks/gpu_session.sh train seresnet50 [finetune.py options]
#   bash benchmarks/gpu_session.sh train efficientnet_b0,vit_small_patch16_224
#   bash benchmarks/gpu_session.sh ensemble [runs/*/predictions.npz]   # back here, on CPU
#
# The device call carries `.whl` (timm 1.0.31, which the box lacks) and `.data` (cifar10.tar.gz); see
# BENCHMARKS.md ("Issue 9 on a GPU") for how to make both, the budget and the order of the calls.
#
# Environment: OUT (required: what comes back), DATA (.data/cifar10.tar.gz), HUB_OWNER (the Hub namespace the
# members would be pushed to, default vision-ensemble), MODELS (the members), SITE (/tmp/site: where carried
# wheels are installed), VISION_ENSEMBLE_CACHE (decoded data, /tmp/vision_ensemble_cache),
# GPU_SESSION_CPU=1 (dry run on a CPU: no CUDA check, `accelerate launch --cpu`), THROUGHPUT_ARGS (smoke's
# train_throughput.py options, e.g. "--batch-size 16" for a CPU dry run; smoke's own options go to finetune.py).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${OUT:?set OUT to the folder whose files come back (the device tool sets it)}"
DATA=${DATA:-.data/cifar10.tar.gz}
HUB_OWNER=${HUB_OWNER:-vision-ensemble}
MODELS=${MODELS:-seresnet50 efficientnet_b0 vit_small_patch16_224}
SITE=${SITE:-/tmp/site}
CPU=${GPU_SESSION_CPU:-0}
export VISION_ENSEMBLE_CACHE=${VISION_ENSEMBLE_CACHE:-/tmp/vision_ensemble_cache}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=15  # live logs, no progress-bar flood
# torch.compile's recompile and autotuning chatter would drown the log; errors still print.
export TORCH_LOGS="-dynamo,-inductor" PYTHONWARNINGS=ignore
mkdir -p "$OUT"

step=${1:-}
[[ -n $step ]] || { sed -n '2,8p' "$0"; exit 2; }
shift

# --- software: carried wheels first on the path, then check versions (fail fast, before any data work) ------
export PYTHONPATH=.
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE:."
fi
need_gpu=$([[ $CPU == 1 || $step == ensemble ]] && echo 0 || echo 1)  # the ensemble needs neither GPU nor data
python3 - "$need_gpu" <<'EOF' | tee "$OUT/versions.txt"
import platform, sys
import accelerate, numpy, timm, torch
from packaging.version import Version

need_gpu = sys.argv[1] == "1"
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"python {platform.python_version()}  torch {torch.__version__}  timm {timm.__version__} ({timm.__file__})  "
      f"accelerate {accelerate.__version__}  numpy {numpy.__version__}  GPU {gpu}")
if Version(timm.__version__) < Version("1.0.31"):
    sys.exit(f"timm {timm.__version__} < 1.0.31 (save_for_hf has no data_config): carry .whl, see BENCHMARKS.md")
if need_gpu and not torch.cuda.is_available():
    sys.exit("no CUDA device (GPU_SESSION_CPU=1 for a CPU dry run)")
EOF
python3 train/finetune.py --help >/dev/null  # every import of a training run, before minutes are spent
[[ $step == ensemble || -f $DATA ]] || { echo "no $DATA: mkdir -p .data && cp ../shared/data/cifar10.tar.gz .data/, carry .data" >&2; exit 2; }

if [[ $CPU == 1 ]]; then
    LAUNCH=(python3 -m accelerate.commands.launch --cpu --num_processes 1 --num_cpu_threads_per_process 2
            --num_machines 1 --mixed_precision no --dynamo_backend no)
else
    LAUNCH=(python3 -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision bf16
            --dynamo_backend no)
fi

throughput() {  # throughput [train_throughput.py options]: each member at its recipe size, eager then compiled
    local model
    for model in $MODELS; do
        python3 benchmarks/train_throughput.py --model "$model" --data-dir "$DATA" "$@"
        python3 benchmarks/train_throughput.py --model "$model" --data-dir "$DATA" --compile "$@"
    done
}

train() {  # train MODEL RUN_DIR [finetune.py options]: the run, then its time and memory in RUN_DIR/summary.json
    local model=$1 run=$2 start=$SECONDS
    shift 2
    "${LAUNCH[@]}" train/finetune.py --model "$model" --data-dir "$DATA" --output-dir "$run" \
        --hub-repo-id "$HUB_OWNER/$model-cifar10" "$@"
    python3 - "$run" $((SECONDS - start)) <<'EOF'
import json, sys
from pathlib import Path

run, wall_s = Path(sys.argv[1]), int(sys.argv[2])
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
best = json.loads((run / "best" / "metrics.json").read_text())
summary = {"run": run.name, "epochs": len(rows), "best_epoch": best["epoch"], "best_val_top1": best["val_top1"],
           "train_s": round(sum(r["epoch_time_s"] for r in rows), 1), "wall_s": wall_s,
           "train_images_per_s": round(sum(r["train_images_per_s"] for r in rows) / len(rows)),
           "peak_gpu_memory_gib": max((r.get("peak_gpu_memory_gib", 0.0) for r in rows), default=0.0)}
(run / "summary.json").write_text(json.dumps(summary, indent=1))
print("summary", json.dumps(summary))
EOF
}

pack() {  # pack NAME RUN_DIR... [-- OTHER_PATHS]: the runs' small files (no weights) in one archive under $OUT
    local name=$1 files=()
    shift
    while (($#)) && [[ $1 != -- ]]; do
        files+=("$1/metrics.jsonl" "$1/training_curves.png" "$1/predictions.npz" "$1/summary.json"
                "$1/training_args.json" "$1/best/config.json" "$1/best/metrics.json" "$1/best/README.md")
        shift
    done
    (($#)) && shift  # the --
    tar czf "$OUT/$name.tar.gz" "${files[@]}" "$@"
    echo "$OUT/$name.tar.gz: $(du -h "$OUT/$name.tar.gz" | cut -f1) (unpack here with: tar xzf $name.tar.gz)"
}

ensemble() {  # ensemble [FILES]: the report from the members' predictions.npz, and their curves, into $RESULTS
    local files=("$@") results=${RESULTS:-results/cifar10} file
    ((${#files[@]})) || files=(runs/*/predictions.npz)
    python3 evaluation/evaluate.py --predictions "${files[@]}" --output-dir "$results" --tta
    for file in "${files[@]}"; do
        mkdir -p "$results/$(basename "$(dirname "$file")")"
        cp "$(dirname "$file")/metrics.jsonl" "$(dirname "$file")/training_curves.png" \
            "$results/$(basename "$(dirname "$file")")/"
    done
}

case $step in
    smoke)  # every step on a few images: a typo or a missing package costs 2 minutes, not 10
        runs=()
        for model in $MODELS; do runs+=("runs/smoke/$model"); done
        {
            for model in $MODELS; do
                train "$model" "runs/smoke/$model" --max-train-samples 512 --max-eval-samples 500 --epochs 1 "$@"
            done
            RESULTS=runs/smoke-results ensemble runs/smoke/*/predictions.npz
            model=${MODELS%% *}
            python3 benchmarks/train_throughput.py --model "$model" --data-dir "$DATA" --steps 3 --warmup 2 --workers 4 \
                ${THROUGHPUT_ARGS:-}
            python3 benchmarks/train_throughput.py --model "$model" --data-dir "$DATA" --steps 3 --warmup 2 --workers 4 \
                --compile ${THROUGHPUT_ARGS:-}
        } 2>&1 | tee "$OUT/smoke.log"
        pack smoke "${runs[@]}" -- runs/smoke-results ;;
    throughput)
        throughput "$@" 2>&1 | tee "$OUT/throughput.log" ;;
    train)
        [[ -n ${1:-} ]] || { echo "train MODEL[,MODEL...] [finetune.py options]" >&2; exit 2; }
        IFS=, read -ra members <<<"$1"
        shift
        for model in "${members[@]}"; do  # packed one by one: a later member's failure keeps the earlier ones
            train "$model" "runs/$model" "$@" 2>&1 | tee "$OUT/train-$model.log"
            pack "run-$model" "runs/$model"
        done ;;
    ensemble)
        ensemble "$@" 2>&1 | tee "$OUT/ensemble.log" ;;
    *)
        echo "unknown step '$step': smoke, throughput, train MODEL[,MODEL...], ensemble" >&2
        exit 2 ;;
esac
