"""Ensemble: soft voting, temperature scaling, the manifest, evaluation CLI and Hub-layout loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch

from conftest import REPO, make_member, run_in_process
from vision_ensemble.config import CIFAR10_CLASSES
from vision_ensemble.evaluation.calibration import apply_temperature, expected_calibration_error, fit_temperature, nll
from vision_ensemble.evaluation.ensemble import Ensemble, fit_weights
from vision_ensemble.model import Member, ModelError


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    return [make_member(root / "a", 0, 32, sharpen=20.0), make_member(root / "b", 1, 48, sharpen=20.0)]


def test_soft_voting_equals_the_hand_computed_weighted_mean(members, cifar10):
    ensemble = Ensemble([Member.load(str(m)) for m in members], weights=[0.3, 0.7], temperature=1.0)
    images = torch.from_numpy(cifar10.test.images[:16]).permute(0, 3, 1, 2)
    probs, member_probs = ensemble.predict(images)
    by_hand = []
    for folder in members:  # each member with its own size from its own config, computed independently
        model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        cfg = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
        size = cfg["input_size"][-1]
        x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode=cfg["interpolation"],
                                            antialias=True, align_corners=False).clamp(0, 255) / 255
        x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
        with torch.no_grad():
            by_hand.append(model(x).softmax(1).numpy())
    np.testing.assert_allclose(member_probs, np.stack(by_hand), atol=1e-5)
    np.testing.assert_allclose(probs, 0.3 * by_hand[0] + 0.7 * by_hand[1], atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)


def test_temperature_scaling_lowers_validation_nll_and_ece(members, cifar10):
    ensemble = Ensemble([Member.load(str(m)) for m in members])
    pick = np.random.default_rng(0).choice(len(cifar10.val), 400, replace=False)  # all classes, not class 0 only
    images = torch.from_numpy(cifar10.val.images[pick]).permute(0, 3, 1, 2)
    labels = cifar10.val.labels[pick]
    raw = ensemble.combine(ensemble.member_probabilities(images), calibrated=False)
    temperature = fit_temperature(raw, labels)
    calibrated = apply_temperature(raw, temperature)
    assert temperature > 1  # the members were made over-confident
    assert nll(calibrated, labels) < nll(raw, labels) - 0.1
    assert expected_calibration_error(calibrated, labels) < expected_calibration_error(raw, labels)


def test_onnxruntime_members_match_eager_pytorch(members, cifar10, tmp_path):
    eager = Ensemble([Member.load(str(m)) for m in members], tta_flip=True)
    served = Ensemble([Member.load(str(m)) for m in members], tta_flip=True)
    served.use_onnxruntime(tmp_path)
    images = torch.from_numpy(cifar10.test.images[:64]).permute(0, 3, 1, 2)
    a, b = eager.predict(images)[0], served.predict(images)[0]
    np.testing.assert_allclose(b, a, atol=1e-5)
    np.testing.assert_array_equal(np.argsort(-b, axis=1)[:, :3], np.argsort(-a, axis=1)[:, :3])


def test_fitted_weights_prefer_the_better_member():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 500)
    good = np.full((500, 5), 0.05)  # right on 85% of the images (a perfect member would make any weights fit)
    peaks = np.where(rng.random(500) < 0.85, labels, (labels + rng.integers(1, 5, 500)) % 5)
    good[np.arange(500), peaks] = 0.8
    bad = rng.dirichlet(np.ones(5), 500)
    weights = fit_weights(np.stack([bad, good]), labels)
    assert weights.sum() == pytest.approx(1) and weights[1] > 0.9


def test_manifest_round_trips(members, tmp_path):
    ensemble = Ensemble([Member.load(str(m)) for m in members], weights=[0.25, 0.75], temperature=1.7, tta_flip=True)
    path = ensemble.save_manifest(tmp_path / "ensemble.json")
    again = Ensemble.from_manifest(path)
    assert again.manifest() == ensemble.manifest()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    np.testing.assert_allclose(again.predict(images)[0], ensemble.predict(images)[0], atol=1e-6)


def test_mismatched_classes_and_corrupt_weights_name_the_member(members, tmp_path):
    other = make_member(tmp_path / "other", 2, 32, classes=[f"c{i}" for i in range(10)])
    with pytest.raises(ModelError, match="member '.*other' has classes"):
        Ensemble([Member.load(str(members[0])), Member.load(str(other))])
    broken = make_member(tmp_path / "broken", 3, 32)
    (broken / "model.safetensors").write_bytes(b"garbage" * 100)
    with pytest.raises(ModelError, match="member '.*broken'.*broken/model.safetensors: could not load the weights"):
        Member.load(str(broken))
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="broken/model.safetensors is missing"):
        Member.load(str(broken))
    with pytest.raises(ModelError, match="member 'no/such-repo'"):
        Member.load("no/such-repo")


@pytest.mark.slow
def test_hub_layout_loads_offline_through_huggingface_hub_and_timm(members, tmp_path, monkeypatch):
    """A local Hub cache in the exact layout snapshot_download serves, read with HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-member" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in members[0].iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (cache / "models--someone--tiny-member" / "refs").mkdir()
    (cache / "models--someone--tiny-member" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = ("import timm, torch, sys; sys.path.insert(0, %r)\n"
            "from vision_ensemble.model import Member\n"
            "m = timm.create_model('hf-hub:someone/tiny-member', pretrained=True).eval()\n"
            "ours = Member.load('someone/tiny-member')\n"
            "theirs, mine = m.state_dict(), ours.model.state_dict()\n"
            "assert theirs.keys() == mine.keys() and all(torch.equal(t, mine[k]) for k, t in theirs.items())\n"
            "x = torch.randn(2, 3, 32, 32)\n"
            # Member.load runs channels_last, timm's model NCHW: other kernels, the same numbers to float precision.
            "torch.testing.assert_close(m(x), ours.model(x), rtol=1e-4, atol=1e-5)\n"
            "print('ok', ours.class_names[0])") % str(REPO)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok airplane"


@pytest.mark.slow
def test_evaluate_cli_writes_report_manifest_and_plots(members, cifar10, cifar10_archive, cache_root, tmp_path):
    out_dir = tmp_path / "results"
    result = subprocess.run([sys.executable, str(REPO / "evaluation" / "evaluate.py"), "--models", *map(str, members),
                             "--data-dir", str(cifar10_archive), "--cache-dir", str(cache_root), "--output-dir",
                             str(out_dir), "--tta", "--max-eval-samples", "300"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out_dir / "report.json").read_text())
    assert report["test_images"] == 300 and len(report["members"]) == 2
    assert 0 <= report["ensemble"]["top1"] <= report["ensemble"]["top3"] <= 100
    assert report["ensemble"]["nll_calibrated"] <= report["ensemble"]["nll_uncalibrated"] + 0.05
    assert set(report["per_class"]) >= set(CIFAR10_CLASSES)
    assert np.asarray(report["confusion_matrix"]).sum() == 300
    assert (out_dir / "confusion_matrix.png").stat().st_size > 10_000
    assert (out_dir / "reliability_diagram.png").stat().st_size > 10_000
    again = Ensemble.from_manifest(out_dir / "ensemble.json")  # relative member paths resolve from the manifest
    assert again.temperature == pytest.approx(report["ensemble"]["temperature"])
    missing = run_in_process(REPO / "evaluation" / "evaluate.py", "--models", tmp_path / "nope", "--data-dir",
                             cifar10_archive, "--cache-dir", cache_root, check=False)
    assert missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr


def test_source_size_keeps_what_every_member_sees_of_a_photo(members):
    from vision_ensemble.images import load_rgb

    ensemble = Ensemble([Member.load(str(m)) for m in members])
    crops = [m.data_config["crop_pct"] or 1.0 for m in ensemble.members]
    side = max(int(s // c) for s, c in zip((32, 48), crops))
    assert ensemble.source_size == (side, side)
    # A 1600x1200 photo (a smooth scene: the two resizes differ only by interpolation), decoded whole or straight
    # to source_size: every member gets nearly the same input, so nearly the same answer.
    y, x = np.mgrid[0:1200, 0:1600]
    photo = np.stack([(x / 7) % 255, (y / 5) % 255, ((x + y) / 11) % 255], axis=2).astype(np.uint8)
    from io import BytesIO

    from PIL import Image
    buffer = BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=95)
    whole = load_rgb(buffer.getvalue())
    small = load_rgb(buffer.getvalue(), size=ensemble.source_size)
    assert small.shape == (side, side, 3)
    for member in ensemble.members:
        a = member.transform(torch.from_numpy(whole).permute(2, 0, 1)[None])
        b = member.transform(torch.from_numpy(small).permute(2, 0, 1)[None])
        assert a.shape == b.shape and (a - b).abs().mean() < 0.05  # normalised units; a misplaced crop is ~1


def test_fitted_weights_prefer_an_under_confident_better_member_to_a_confident_worse_one():
    # Label smoothing leaves members under-confident; the weights are fitted with the temperature, so the more
    # accurate member wins (fitted on the raw mix's NLL, the confident 75% member took all the weight).
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 2000)

    def member(accuracy, peak):
        probs = np.full((2000, 5), (1 - peak) / 4)
        right = np.where(rng.random(2000) < accuracy, labels, (labels + rng.integers(1, 5, 2000)) % 5)
        probs[np.arange(2000), right] = peak
        return probs

    weights = fit_weights(np.stack([member(0.75, 0.9), member(0.85, 0.4)]), labels)
    assert weights[1] > 0.5, weights


def test_evaluate_refuses_members_trained_on_different_splits(members, tmp_path, cifar10_archive, cache_root):
    """A member trained on split seed 1 has trained on some of split 0's validation images: ensembled with a
    split-0 member, calibrated and weighted on split 0, its scores would be inflated. Members from before
    split_seed existed split by seed."""
    import shutil
    folders = []
    for name, args in (("old", {"seed": 0}), ("new", {"seed": 3, "split_seed": 1})):
        folder = shutil.copytree(members[0], tmp_path / name)
        (folder / "training_args.json").write_text(json.dumps(args))
        folders.append(folder)
    assert Member.load(str(folders[1])).training_args == {"seed": 3, "split_seed": 1}
    refused = run_in_process(REPO / "evaluation" / "evaluate.py", "--models", *folders, "--data-dir", cifar10_archive,
                             "--cache-dir", cache_root, "--output-dir", tmp_path / "out", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "different train/val splits" in refused.stderr and "split seed 1" in refused.stderr
    assert not (tmp_path / "out" / "report.json").exists()
    asked = run_in_process(REPO / "evaluation" / "evaluate.py", "--models", folders[0], "--split-seed", "2",
                           "--data-dir", cifar10_archive, "--cache-dir", cache_root, "--output-dir", tmp_path / "out",
                           check=False)
    assert asked.returncode == 2 and "--split-seed 2" in asked.stderr
