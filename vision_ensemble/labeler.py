"""`python -m vision_ensemble.labeler`: the labelling app's old name, kept working (see `labeling/app.py`)."""

from .labeling.app import main

if __name__ == "__main__":
    main()
