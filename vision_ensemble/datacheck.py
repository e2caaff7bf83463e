"""`python -m vision_ensemble.datacheck DATA`: check a dataset before training (see `data/check.py`)."""

import sys

from .data.check import main

if __name__ == "__main__":
    sys.exit(main())
