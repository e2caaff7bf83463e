"""vision_ensemble: the code shared by train/, evaluation/ and app.py, in the order data flows.

config      every option and per-backbone recipe, in one place
images      any image file -> RGB uint8 pixels (used by the cache, evaluation and the app)
labeling    labels.csv store, labelling queue, stratified export to an image-folder tree
labeler     the local labelling app (python -m vision_ensemble.labeler FOLDER --classes a,b)
data/       sources -> decoded cache -> stratified split -> device-resident / streaming loaders -> batched
            transforms (CIFAR or photo augmentation, timm's eval geometry)
model       timm creation (pretrained or local weights), export in timm's Hub format, loading it back
finetuning  --freeze (timm's stage groups), frozen BatchNorm, lr scaled to the global batch, --layer-decay
hub         push to and fetch from the Hugging Face Hub; model cards from model_card.md
ensemble    members, soft voting, temperature scaling, calibration, uncertainty rule, the ensemble.json manifest
report      the evaluation report from member probabilities: fitted weights, temperature, uncertainty rule, metrics
predictions a run's best-epoch val/test probabilities in predictions.npz: the report without weights or data
explain     Grad-CAM heatmaps per member (grad-cam library) and their overlay on the image
diagnostics evaluate.py --diagnose: confident-error gallery, top confusions, accuracy under FGSM/PGD (Captum)
serving     one prediction path for the app and the API: input checks, top-k, uncertainty hint, model version
api         the JSON API (POST /api/predict, GET /api/health) beside the Space on one FastAPI app
onnx_export ONNX export of members or the whole ensemble as one graph, checked against PyTorch; int8
thresholds  exact decision-threshold search for binary-classifier scores, curves, plots
plots       training curves, confusion matrix, reliability diagram, error gallery, accuracy under attack
tracking    experiment trackers: checked before training, MLflow runs for training and evaluation
"""
