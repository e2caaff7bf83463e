"""`python -m vision_ensemble.sweep`: Optuna hyperparameter sweeps over train/finetune.py (see `training/sweep.py`)."""

import sys

from .training.sweep import main

if __name__ == "__main__":
    sys.exit(main())
