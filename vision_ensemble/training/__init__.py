"""Training helpers for `train/finetune.py`: what trains and at which rate, and where the run is recorded.

finetuning  --freeze (timm's stage groups), frozen BatchNorm, lr scaled to the global batch, --layer-decay
batch_size  a probe step before the loop: --batch-size auto halves until it fits; out-of-memory advice
imbalance   --class-weights balanced: inverse class frequency in a soft-target cross-entropy (MixUp/CutMix)
distill     --teacher: the loss on the teacher's softened probabilities (mixed like the images) and on the labels
time_budget --time-limit: the first epoch measured, the epoch count and the cosine schedule's horizon fixed
tracking    experiment trackers (TensorBoard, MLflow, W&B): checked first, evaluation runs, failed runs ended FAILED
distributed several processes and machines: launch checks, shared or node-local run folder, checkpoints, resume
sweep       Optuna hyperparameter sweeps of finetune.py runs (python -m vision_ensemble.sweep)
"""
