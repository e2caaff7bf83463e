"""vision_ensemble: the code shared by train/, evaluation/ and app.py, in the order data flows.

config      every option and per-backbone recipe, in one place
images      any image file -> RGB uint8 pixels (used by the cache, evaluation and the app)
data/       sources -> decoded cache -> stratified split -> device-resident / streaming loaders -> BatchTransform
model       timm creation (pretrained or local weights), export in timm's Hub format, loading it back
hub         push to and fetch from the Hugging Face Hub; model cards from model_card.md
ensemble    members, soft voting, temperature scaling, calibration, uncertainty rule, the ensemble.json manifest
serving     one prediction path for the app and the API: input checks, top-k, uncertainty hint, model version
api         the JSON API (POST /api/predict, GET /api/health) beside the Space on one FastAPI app
onnx_export ONNX export of members or the whole ensemble as one graph, checked against PyTorch; int8
report      the evaluation report from member probabilities: fitted weights and temperature, metrics, figures
thresholds  exact decision-threshold search for binary-classifier scores, curves, plots
plots       training curves, confusion matrix, reliability diagram
"""
