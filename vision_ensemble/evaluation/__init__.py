"""Evaluation: from member probabilities to an ensemble people can trust.

ensemble     weighted soft voting, the uncertainty rule, the ensemble.json manifest, `SoftVote` (one module)
calibration  temperature scaling, NLL, reliability bins, expected calibration error, top-k accuracy
conformal    conformal prediction sets: a cut-off calibrated on the validation split for a stated coverage
report       the evaluation report from member probabilities: fitted weights, temperature, metrics, figures
sharding     member inference split across the processes of `accelerate launch evaluate.py`
predictions  a run's best-epoch val/test probabilities in predictions.npz: the report without weights or data
teacher      a student's targets: the ensemble's calibrated probabilities on the training images
student      evaluate.py --student: the student beside the ensemble, its latency, its folder for the Space
explain      Grad-CAM heatmaps per member (grad-cam library) and their overlay on the image
diagnostics  evaluate.py --diagnose: confident-error gallery, top confusions, accuracy under FGSM/PGD (Captum)
label_issues evaluate.py --label-issues: probably wrong val/test labels by confident learning (cleanlab)
thresholds   exact decision-threshold search for binary-classifier scores, curves, plots
threshold_bootstrap  Poisson-bootstrap intervals for the optimal threshold and the metrics at it
"""
