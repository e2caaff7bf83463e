"""The shipped ensemble (models/cifar10/) and its report (results/cifar10/report.json) cannot drift apart: the
committed weights, run as the Space runs them (its manifest: weights, temperature, flip TTA; ONNX Runtime, the app's
default), are evaluated on the 10,000 test images of the shared archive, and every top-1 in the report (written by
evaluate.py through PyTorch) is what they score."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import REPO
from vision_ensemble.evaluation.ensemble import Ensemble
from vision_ensemble.evaluation.predictions import evaluation_batch

SHIPPED = REPO / "models" / "cifar10"
REPORT = REPO / "results" / "cifar10" / "report.json"
TOLERANCE = 0.05  # percentage points


@pytest.mark.slow
def test_the_committed_ensemble_scores_what_its_report_says(cifar10, tmp_path):
    report = json.loads(REPORT.read_text())
    ensemble = Ensemble.from_manifest(SHIPPED)
    ensemble.use_onnxruntime(tmp_path)  # the Space's runtime, and ~25% faster than eager PyTorch here
    images, labels = evaluation_batch(cifar10.test, None, 0)
    assert report["test_images"] == len(labels) == 10_000
    member_probs = ensemble.member_probabilities(images, batch_size=1000)
    by_source = {m["source"].rsplit("/", 1)[-1]: m["top1"] for m in report["members"]}
    for member, probs in zip(ensemble.members, member_probs):
        top1 = 100 * float((probs.argmax(1) == labels).mean())
        assert top1 == pytest.approx(by_source[member.source], abs=TOLERANCE), member.source
    top1 = 100 * float((ensemble.combine(member_probs).argmax(1) == labels).mean())
    assert top1 == pytest.approx(report["ensemble"]["top1"], abs=TOLERANCE)


def test_the_space_reads_the_same_report_as_results():
    """The Space reads report.json beside the manifest; results/ holds the same file with the figures."""
    assert (SHIPPED / "report.json").read_text() == REPORT.read_text()
    manifest = json.loads((SHIPPED / "ensemble.json").read_text())
    assert all((SHIPPED / m["source"] / "model.safetensors").is_file() for m in manifest["members"])
    assert np.isclose(sum(m["weight"] for m in manifest["members"]), 1.0)
    from vision_ensemble.serving.api import measured_top1  # what /api/health says of each member

    members, ensemble = measured_top1(json.loads(REPORT.read_text()), Ensemble.from_manifest(SHIPPED))
    assert None not in members and ensemble == json.loads(REPORT.read_text())["ensemble"]["top1"]


def test_the_space_says_which_members_answer_and_their_measured_accuracy():
    from conftest import _script

    _, status, report = _script(str(REPO / "app.py")).load_ensemble(str(SHIPPED), "torch")
    assert f"test top-1 {report['ensemble']['top1']:.2f}%" in status
    for member in report["members"]:
        assert f"`{member['source'].rsplit('/', 1)[-1]}` ({member['top1']:.2f}%)" in status
