"""Imbalanced classes: the class-weighted soft-target loss, the class-balanced sampler (sharded by Accelerate as
under several processes), and real training runs on a generated 20:1 folder where either option raises the
rare class's recall over the same seeded run without."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate.data_loader import prepare_data_loader
from PIL import Image
from sklearn.utils.class_weight import compute_class_weight
from timm.data import Mixup

from conftest import FINETUNE, run_in_process
from vision_ensemble.data import BalancedSampler, DeviceImageDataset, ImageArrays, device_loader
from vision_ensemble.training.imbalance import WeightedSoftTargetCrossEntropy, balanced_class_weights


def test_class_weights_are_sklearns_and_the_loss_is_torchs_weighted_cross_entropy():
    labels = np.array([0] * 40 + [1] * 2 + [3] * 8)  # class 2 absent
    weights = balanced_class_weights(labels, 4)
    present = np.array([0, 1, 3])
    assert np.allclose(weights[present], compute_class_weight("balanced", classes=present, y=labels))
    assert weights[2] == 0
    logits, hard = torch.randn(50, 4), torch.from_numpy(labels)
    loss = WeightedSoftTargetCrossEntropy(weights)(logits, hard)
    assert torch.allclose(loss, F.cross_entropy(logits, hard, weight=torch.tensor(weights, dtype=torch.float32)))
    # MixUp/CutMix with label smoothing: soft targets, each sample weighs its mix of class weights
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=4)
    _, targets = mixup(torch.zeros(50, 3, 8, 8), hard)
    weighted = WeightedSoftTargetCrossEntropy(weights)(logits, targets)
    per_sample = -(targets * logits.log_softmax(-1)).sum(-1)
    sample_weights = targets @ torch.tensor(weights, dtype=torch.float32)
    assert torch.allclose(weighted, (per_sample * sample_weights).sum() / sample_weights.sum())
    assert sample_weights.min() > 0 and not torch.allclose(sample_weights, sample_weights[0])
    smoothed = WeightedSoftTargetCrossEntropy(np.ones(4), smoothing=0.1)(logits, hard)
    assert torch.allclose(smoothed, F.cross_entropy(logits, hard, label_smoothing=0.1))


def test_balanced_sampler_draws_classes_equally_and_each_process_its_own_shard():
    labels = np.array([0] * 950 + [1] * 50)  # 19:1
    arrays = ImageArrays(np.zeros((1000, 2, 2, 3), np.uint8), labels)

    def epoch_labels(num_processes: int, process_index: int, epoch: int) -> list[int]:
        loader = device_loader(DeviceImageDataset(arrays), 20, shuffle=True, drop_last=True, seed=3,
                               sampler=BalancedSampler(labels, seed=3))
        loader = prepare_data_loader(loader, num_processes=num_processes, process_index=process_index,
                                     put_on_device=False, use_seedable_sampler=True)
        loader.set_epoch(epoch)
        return [batch_labels.tolist() for _, batch_labels in loader]

    single = epoch_labels(1, 0, epoch=1)
    assert 0.45 < np.mean(np.concatenate(single)) < 0.55  # the rare class half the time, not 5%
    rank0, rank1 = epoch_labels(2, 0, epoch=1), epoch_labels(2, 1, epoch=1)
    assert len(rank0) == len(rank1) == 25
    assert [b for pair in zip(rank0, rank1) for b in pair] == single  # the same order, dealt batch by batch
    assert epoch_labels(1, 0, epoch=2) != single and epoch_labels(1, 0, epoch=1) == single  # seeded per epoch


def imbalanced_folder(root: Path, seed: int = 0) -> Path:
    """20:1 in train, balanced val and test: the classes differ in brightness, with overlap, so a model trained
    without correction leans to the common class."""
    rng = np.random.default_rng(seed)
    counts = {"train": (200, 10), "val": (30, 30), "test": (60, 60)}
    for split, per_class in counts.items():
        for c, (name, n) in enumerate(zip(("common", "rare"), per_class)):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                level = 110 + 40 * c + rng.normal(0, 14)
                pixels = np.clip(rng.normal(level, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One baseline and one run per option, same seed and data (6 epochs of test_resnet at 32 px)."""
    tmp = tmp_path_factory.mktemp("imbalance")
    data = imbalanced_folder(tmp / "data")
    results = {}
    for name, extra in (("baseline", []), ("weights", ["--class-weights", "balanced", "--no-data-check"]),
                        ("sampler", ["--sampler", "balanced", "--no-data-check"])):
        out = tmp / name
        result = run_in_process(FINETUNE, "--model", "test_resnet", "--img-size", "32", "--batch-size", "32",
                                "--epochs", "6", "--lr", "1e-2", "--data-dir", data, "--cache-dir", tmp / "cache",
                                "--output-dir", out, *extra)
        predictions = np.load(out / "predictions.npz")
        predicted, labels = predictions["test_probs"].argmax(1), predictions["test_labels"]
        results[name] = {"recall": [float((predicted[labels == c] == c).mean()) for c in (0, 1)],
                         "stdout": result.stdout, "card": (out / "best" / "README.md").read_text()}
    return results


@pytest.mark.slow
def test_either_option_raises_the_rare_class_recall(runs):
    base = runs["baseline"]["recall"][1]
    for option in ("weights", "sampler"):
        common, rare = runs[option]["recall"]
        assert rare >= base + 0.1, (option, runs[option]["recall"], runs["baseline"]["recall"])
        assert common >= 0.8


@pytest.mark.slow
def test_training_warns_about_the_imbalance_and_the_card_says_so(runs):
    assert "warning: imbalanced classes in train: common has 20.0x the images of rare" in runs["baseline"]["stdout"]
    assert "**The training data was imbalanced**: common had 20.0x the images of rare" in runs["baseline"]["card"]
    assert "no correction" in runs["baseline"]["card"]
    assert "`--class-weights balanced`" in runs["weights"]["card"] and "`--sampler balanced`" in runs["sampler"]["card"]


@pytest.mark.slow
def test_both_options_at_once_are_refused():
    result = run_in_process(FINETUNE, "--class-weights", "balanced", "--sampler", "balanced", check=False)
    assert result.returncode != 0 and "choose one" in result.stderr and "Traceback" not in result.stderr
