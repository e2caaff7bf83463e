"""Training helpers for `train/finetune.py`: what trains and at which rate, and where the run is recorded.

finetuning  --freeze (timm's stage groups), frozen BatchNorm, lr scaled to the global batch, --layer-decay
tracking    experiment trackers (TensorBoard, MLflow, W&B): checked before training, MLflow runs for evaluation
distributed several processes and machines: launch checks, shared or node-local run folder, checkpoints, resume
sweep       Optuna hyperparameter sweeps of finetune.py runs (python -m vision_ensemble.sweep)
"""
