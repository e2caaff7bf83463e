"""ONNX export: per-member and single-graph files, run by ONNX Runtime on CIFAR-10 test images, against PyTorch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import timm
import torch

from conftest import REPO
from vision_ensemble.config import CIFAR10_CLASSES, ONNX_TOLERANCE
from vision_ensemble.evaluation.ensemble import Ensemble
from vision_ensemble.model import Member, export_model, training_data_config
from vision_ensemble.model.runtime import member_filename
from vision_ensemble.serving.onnx_export import OnnxCheckError, check_images, export


def make_member(folder, name, seed, size, sharpen=8.0, **model_kwargs):
    """A tiny timm model exported like a trained member, its logits scaled so probabilities are far from uniform."""
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=len(CIFAR10_CLASSES), **model_kwargs)
    with torch.no_grad():
        for p in model.get_classifier().parameters():
            p.mul_(sharpen)
    return export_model(model, folder, training_data_config(model, size), list(CIFAR10_CLASSES))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Three architectures and the three resize paths from 32 px CIFAR images: bilinear antialiased downscale
    (CNN, 24 px), bicubic antialiased downscale (ViT, 24 px), bicubic upscale (EfficientNet, 48 px)."""
    root = tmp_path_factory.mktemp("onnx_members")
    folders = [make_member(root / "resnet", "test_resnet", 0, 24),
               make_member(root / "vit", "test_vit", 1, 24, img_size=24, patch_size=4),
               make_member(root / "effnet", "test_efficientnet", 2, 48)]
    ensemble = Ensemble([Member.load(str(f)) for f in folders], weights=[0.5, 0.3, 0.2], temperature=1.7)
    return ensemble.save_manifest(root / "ensemble.json")


@pytest.fixture(scope="module")
def test_images(cifar10):
    pick = np.random.default_rng(1).choice(len(cifar10.test), 64, replace=False)
    return torch.from_numpy(cifar10.test.images[pick]).permute(0, 3, 1, 2).contiguous(), cifar10.test.labels[pick]


def ort_run(path, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.slow
def test_cli_exports_each_member_equal_to_pytorch_and_reports_int8(manifest, cifar10_archive, cache_root, cifar10,
                                                                   test_images, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VISION_ENSEMBLE_CACHE": str(tmp_path / "not-this-cache")}
    run = subprocess.run([sys.executable, "-m", "vision_ensemble.onnx_export", "--manifest", str(manifest),
                          "--output", str(tmp_path / "onnx"), "--quantize", "int8", "--data-dir", str(cifar10_archive),
                          "--check-images", "200",
                          "--cache-dir", str(cache_root)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count(": ok") == 3 and "int8: top-1 agreement with fp32" in run.stdout
    summary = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert summary["check_images"] == 200
    assert all(c["max_abs_diff"] <= c["tolerance"] and c["top1_agreement"] >= 99 for c in summary["check"].values())
    onnx_files = [name for name in os.listdir(tmp_path / "onnx") if name.endswith(".onnx")]
    assert len(onnx_files) == 6 and not any(name.startswith(".") for name in onnx_files)  # fp32 and int8
    int8 = summary["int8"]
    assert 0 <= int8["top1_agreement"] <= 100 and {"top1_fp32", "top1_int8"} <= set(int8)

    # Independently of the export code: each file, run batched (dynamic batch) on the network's input.
    ensemble = Ensemble.from_manifest(manifest)
    images, _ = test_images
    for member in ensemble.members:
        path = tmp_path / "onnx" / member_filename(member)
        x = member.transform(images)
        logits = ort_run(path, x.numpy())
        expected = member.probabilities(images).numpy()
        np.testing.assert_allclose(torch.from_numpy(logits).softmax(1).numpy(), expected, atol=ONNX_TOLERANCE)
        quantized = ort_run(path.with_suffix(".int8.onnx"), x.numpy())
        assert quantized.shape == logits.shape and np.isfinite(quantized).all()


def test_per_member_check_compares_with_the_manifests_flip_tta(manifest, tmp_path):
    """evaluate.py --tta writes manifests with flip TTA: the members' exports must pass the check against them."""
    ensemble = Ensemble.from_manifest(manifest)
    ensemble.tta_flip = True
    summary = export(ensemble, tmp_path / "onnx", images=check_images(None, 32, 16)[0])
    assert len(summary["check"]) == 3 and all(c["max_abs_diff"] <= c["tolerance"] for c in summary["check"].values())


@pytest.mark.parametrize("float_input,tta_flip", [(False, False), (True, True)])
def test_single_graph_gives_the_ensembles_calibrated_probabilities(manifest, test_images, tmp_path, float_input,
                                                                   tta_flip):
    ensemble = Ensemble.from_manifest(manifest)
    ensemble.tta_flip = tta_flip
    images, labels = test_images
    summary = export(ensemble, tmp_path, single_graph=True, input_size=32, float_input=float_input, quantize="int8",
                     images=images, labels=labels)
    expected, _ = ensemble.predict(images)
    feed = images.float().div(255).numpy() if float_input else images.numpy()
    probs = ort_run(tmp_path / "ensemble.onnx", feed)
    np.testing.assert_allclose(probs, expected, atol=ONNX_TOLERANCE)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert summary["check"]["max_abs_diff"] <= ONNX_TOLERANCE
    int8 = ort_run(tmp_path / "ensemble.int8.onnx", feed)
    agreement = np.mean(int8.argmax(1) == probs.argmax(1)) * 100
    assert summary["int8"]["top1_agreement"] == pytest.approx(agreement)
    print(f"int8 single graph: top-1 agreement with fp32 {agreement:.1f}% on {len(images)} CIFAR-10 test images")


def test_a_graph_that_differs_from_pytorch_is_refused(manifest, test_images, tmp_path):
    """The check compares against the ensemble it exported: a graph exported with another temperature fails it."""
    ensemble = Ensemble.from_manifest(manifest)
    images, _ = test_images
    export(ensemble, tmp_path, single_graph=True, images=images)
    from vision_ensemble.model.runtime import inference_session
    from vision_ensemble.serving.onnx_export import check_close, graph_probabilities

    ensemble.temperature = 1.0
    with pytest.raises(OnnxCheckError, match="differ from PyTorch's"):
        check_close("stale graph", graph_probabilities(inference_session(tmp_path / "ensemble.onnx"), images),
                    ensemble.predict(images)[0])


@pytest.fixture(scope="module")
def huge_logit_member(tmp_path_factory):
    """An efficientnet-like member whose logits pass 160, as those of an efficientnet_b0 trained briefly at 64 px did
    on CIFAR-10 (issue 21), where fp32 rounding moved probabilities by 8.9e-3 and the absolute check refused it."""
    folder = make_member(tmp_path_factory.mktemp("huge") / "effnet", "test_efficientnet", 3, 32, sharpen=3000.0)
    return Ensemble([Member.load(str(folder))])


def test_a_member_with_huge_logits_passes_the_scale_aware_check(huge_logit_member, test_images, tmp_path):
    images, _ = test_images
    summary = export(huge_logit_member, tmp_path, images=images)
    (check,) = summary["check"].values()
    member = huge_logit_member.members[0]
    session = onnxruntime.InferenceSession(summary["files"][member.source], providers=["CPUExecutionProvider"])
    torch_probs = member.probabilities(images).numpy()
    onnx_probs = torch.from_numpy(session.run(None, {"input": member.transform(images).numpy()})[0]).softmax(1).numpy()
    with torch.no_grad():
        assert np.abs(member.model(member.transform(images)).numpy()).max() > 160
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-2)  # the served answer is the same
    assert check["max_abs_diff"] <= check["tolerance"] and check["top1_agreement"] == 100.0
    assert summary["files"][member.source].endswith(member_filename(member))
    assert member_filename(member).startswith("test_efficientnet-")


def test_a_wrong_member_graph_is_refused_even_at_huge_scale(huge_logit_member, test_images, tmp_path):
    """A graph of a slightly different network (the classifier 1% off: a stale or mis-exported graph) fails."""
    from vision_ensemble.model.runtime import export_member, inference_session
    from vision_ensemble.serving.onnx_export import check_close, logit_tolerance, member_logits

    member, (images, _) = huge_logit_member.members[0], test_images
    expected = member_logits(member, images)
    with torch.no_grad():
        member.model.get_classifier().weight.mul_(1.01)
    try:
        session = inference_session(export_member(member, tmp_path))
    finally:
        with torch.no_grad():
            member.model.get_classifier().weight.div_(1.01)
    with pytest.raises(OnnxCheckError, match="logits differ from PyTorch's"):
        check_close(member.source, member_logits(member, images, session), expected, logit_tolerance(expected),
                    "logits")


def test_member_files_are_named_by_model_and_hash(manifest):
    names = {member_filename(m) for m in Ensemble.from_manifest(manifest).members}
    assert len(names) == 3 and all(not n.startswith(".") for n in names)
    member = Ensemble.from_manifest(manifest).members[0]
    member.source = "../m1/best"
    assert member_filename(member).startswith("test_resnet-") and "/" not in member_filename(member)
