#!/bin/bash
# The commands of docs/distributed.md ("Several GPUs and machines"), run on one CPU machine: two simulated machines
# of two gloo processes each on localhost (accelerate launch --multi_gpu starts gloo processes where there is no GPU).
#   examples/two_nodes_on_cpu.sh [DATA (default ../shared/data/cifar10.tar.gz)] [WORK FOLDER (default /tmp/two_nodes)]
# 1. the command-line form, one shared run folder and cache; 2. the --config_file form, node-local folders;
# 3. the sbatch script's srun line with SLURM's variables set by hand, run twice: the second continues the first.
set -e
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/cifar10.tar.gz}; W=${2:-/tmp/two_nodes}
PYTHON=${PYTHON:-python}
ACC="$PYTHON -m accelerate.commands.launch"
TRAIN="--model test_resnet --img-size 32 --batch-size 8 --epochs 1 --data-dir $DATA --max-train-samples 256 --max-eval-samples 64"
export OMP_NUM_THREADS=1
rm -rf "$W"; mkdir -p "$W"
echo "== 1. accelerate launch --multi_gpu --num_machines 2 --num_processes 4 --machine_rank R"
for r in 0 1; do
  VISION_ENSEMBLE_CACHE=$W/cache $ACC --multi_gpu --num_machines 2 --num_processes 4 --machine_rank $r \
    --main_process_ip 127.0.0.1 --main_process_port 29611 --mixed_precision no --dynamo_backend no \
    train/finetune.py $TRAIN --output-dir $W/cli > $W/cli$r.log 2>&1 &
done; wait; grep -h "process(es)" $W/cli0.log
echo "== 2. accelerate launch --config_file node.yaml, each node its own cache and run folder"
for r in 0 1; do
  printf 'distributed_type: MULTI_GPU\nnum_machines: 2\nnum_processes: 4\nmachine_rank: %s\nmain_process_ip: 127.0.0.1\nmain_process_port: 29612\nmixed_precision: "no"\n' $r > $W/node$r.yaml
  VISION_ENSEMBLE_CACHE=$W/node$r/cache $ACC --config_file $W/node$r.yaml train/finetune.py $TRAIN \
    --output-dir $W/node$r/run > $W/cfg$r.log 2>&1 &
done; wait; grep -h "process(es)" $W/cfg0.log; ls $W/node1/run
echo "== 3. the sbatch script's srun line (2 processes per node instead of 8), submitted twice"
export MAIN_IP=127.0.0.1 SLURM_NNODES=2 RUN=$W/slurm
for pass in 1 2; do
  export RESUME=$([ -d $RUN/checkpoints ] && echo "--resume latest")
  for r in 0 1; do
    SLURM_NODEID=$r VISION_ENSEMBLE_CACHE=$W/local$r bash -c "$ACC --multi_gpu --num_machines \$SLURM_NNODES \
      --num_processes \$((SLURM_NNODES * 2)) --machine_rank \$SLURM_NODEID --main_process_ip \$MAIN_IP \
      --main_process_port 2962$pass --mixed_precision no --dynamo_backend no \
      train/finetune.py $TRAIN --epochs $pass --output-dir \$RUN \$RESUME" > $W/slurm$pass$r.log 2>&1 &
  done; wait
  grep -h "process(es)\|resumed from" $W/slurm${pass}0.log
done
echo "== evaluate the result under accelerate launch"
$ACC --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no evaluation/evaluate.py \
  --models $W/slurm/best $W/cli/best --data-dir $DATA --cache-dir $W/cache --max-eval-samples 64 --output-dir $W/results \
  | tail -n 3
