"""`python -m vision_ensemble.onnx_export`: the ONNX exporter's command line (see `serving/onnx_export.py`)."""

from .serving.onnx_export import main

if __name__ == "__main__":
    main()
