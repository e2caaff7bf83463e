"""vision_ensemble: the code shared by train/, evaluation/ and app.py, one sub-package per step of the data flow.
Each floor imports only the floors above it in this list (tests/test_layout.py checks it).

config       every option and per-backbone recipe, in one place
images       any image file -> RGB uint8 pixels (the cache, evaluation and the app decode alike)
plots        the figures: training curves, confusion matrix, reliability diagram, threshold curves, galleries
hub          the Hugging Face Hub: push a folder, resolve a member to a local folder, model cards
data/        sources -> decoded cache -> stratified split -> device-resident / streaming loaders -> batched
             transforms (CIFAR or photo augmentation, timm's eval geometry)
model/       timm creation and export in timm's Hub format; a member (network + its preprocessing) run eagerly
             or through ONNX Runtime
training/    fine-tuning strategies (freeze, layer decay, lr scaling) and experiment tracking
evaluation/  ensemble, calibration, report, predictions.npz, Grad-CAM, diagnostics, threshold optimizer
serving/     one prediction path for the Space, its JSON API and batch prediction (`vision-ensemble predict`,
             `load`); ONNX export of the ensemble
labeling/    label your own images: labels.csv store, queue, export; the labelling app
cli          the `vision-ensemble` command: one subcommand per step, each an entry point's own parser and main
"""


def __getattr__(name: str):
    """`from vision_ensemble import load`: the Python API, imported when first asked for (`import vision_ensemble`
    and `vision-ensemble --help` stay free of torch)."""
    if name in ("load", "Classifier"):
        from .serving import batch

        return getattr(batch, name)
    raise AttributeError(f"module 'vision_ensemble' has no attribute {name!r}")
