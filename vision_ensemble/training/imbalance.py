"""Training on imbalanced classes: `--class-weights balanced` (inverse class frequency, as scikit-learn's
`compute_class_weight`) in a cross-entropy that takes MixUp/CutMix soft targets and label smoothing.  The other
remedy, `--sampler balanced`, is `data.loaders.BalancedSampler`."""

from __future__ import annotations

import numpy as np
import torch


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """n_samples / (n_classes * count) per class, over the classes present (an absent class gets 0: no sample
    of it is ever weighted)."""
    from sklearn.utils.class_weight import compute_class_weight  # sklearn takes 1.5 s to import: only when asked
    present = np.unique(labels)
    weights = np.zeros(num_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights


class WeightedSoftTargetCrossEntropy(torch.nn.Module):
    """Cross-entropy against soft targets with class weights.  A sample weighs its target's mix of class weights
    (`targets @ weights`: a MixUp of a rare and a common image weighs in between), and the sum is divided by the
    total weight, as torch's weighted cross-entropy does: with hard targets and no smoothing the two are equal.
    Hard labels are first turned into targets smoothed by `smoothing` (as timm's LabelSmoothingCrossEntropy)."""

    def __init__(self, class_weights, smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(np.asarray(class_weights), dtype=torch.float32))
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.ndim == 1:
            num_classes = logits.shape[-1]
            targets = torch.nn.functional.one_hot(targets, num_classes).float() * (1 - self.smoothing) \
                + self.smoothing / num_classes
        targets = targets.float()
        per_sample = -(targets * logits.float().log_softmax(dim=-1)).sum(dim=-1)
        weights = targets @ self.weight
        return (weights * per_sample).sum() / weights.sum()
