"""vision_ensemble: the code shared by train/, evaluation/ and app.py, in the order data flows.

config      every option and per-backbone recipe, in one place
images      any image file -> RGB uint8 pixels (used by the cache, evaluation and the app)
data/       sources -> decoded cache -> stratified split -> device-resident / streaming loaders -> BatchTransform
model       timm creation (pretrained or local weights), export in timm's Hub format, loading it back
hub         push to and fetch from the Hugging Face Hub; model cards from model_card.md
ensemble    members, soft voting, temperature scaling, calibration, uncertainty rule, the ensemble.json manifest
report      the evaluation report from member probabilities: fitted weights and temperature, metrics, figures
predictions a run's best-epoch val/test probabilities in predictions.npz: the report without weights or data
thresholds  exact decision-threshold search for binary-classifier scores, curves, plots
plots       training curves, confusion matrix, reliability diagram
"""
