"""Knowledge distillation (Hinton et al., 2015) inside the members' own training loop: the student learns from
the teacher ensemble's calibrated probabilities on each training image (cached once, looked up by the batch's
sample indices) and from the labels.

Loss: `alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels)`, both distributions softened by the
distillation temperature T (the T^2 keeps the soft term's gradients at the scale of the hard one's).

Why cached targets and not the teacher run online: the teacher is several networks, each larger than the
student, so running it on every augmented batch would cost more than training the student; its predictions
on the un-augmented training images cost one inference pass.  CIFAR's crop (4 px of padding) and flip barely
change what an image shows, so the clean image's target stands in for the augmented one.  MixUp and CutMix do
change it: their inputs get the cached targets mixed with the same lambda and the same box, by the same timm
`Mixup` call that mixes the images (tests/test_distill.py checks the result against timm's own one-hot mixing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import one_hot
from timm.loss import SoftTargetCrossEntropy

from ..config import TrainConfig


def soften(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Probabilities at a temperature: softmax(log p / T), what the student's softmax(z / T) is compared to."""
    return torch.softmax(probs.float().clamp_min(1e-12).log() / temperature, dim=1)


class Distillation:
    """Targets and loss for a student: `mix` (in place of timm's `Mixup`) pairs each batch's label targets with
    the teacher's softened probabilities, `loss` mixes the two terms.

    `teacher_probs[i]` is the teacher's probability row for training sample i (the loader's index)."""

    def __init__(self, teacher_probs: torch.Tensor, cfg: TrainConfig, num_classes: int):
        self.targets = soften(teacher_probs, cfg.distill_temperature)
        self.temperature, self.alpha = cfg.distill_temperature, cfg.distill_alpha
        self.num_classes, self.label_smoothing = num_classes, cfg.label_smoothing
        # Mixup's target mixing is linear (lam * y + (1 - lam) * y.flip(0), per batch or per sample): given
        # [smoothed one-hot | teacher] as one 2C-wide dense ("multi-label", unsmoothed) target it mixes both
        # halves with the lambdas and boxes it drew for the images, through timm's public API alone.
        self.label_loss, self.mixup = SoftTargetCrossEntropy(), None
        if cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0:
            self.mixup = Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mixup_prob,
                               label_smoothing=0.0, num_classes=2 * num_classes, multi_label=True)

    def mix(self, inputs: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
        """(inputs, (label targets, teacher targets)), MixUp/CutMix applied to all three alike."""
        off = self.label_smoothing / self.num_classes
        hard = one_hot(labels, self.num_classes, on_value=1 - self.label_smoothing + off, off_value=off)
        both = torch.cat([hard, self.targets[indices.to(self.targets.device)].to(hard.device)], dim=1)
        if self.mixup is not None:
            inputs, both = self.mixup(inputs, both)
        return inputs, (both[:, :self.num_classes], both[:, self.num_classes:])

    def loss(self, logits: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        hard, soft = targets
        logits = logits.float()
        kd_term = F.kl_div(F.log_softmax(logits / self.temperature, dim=1), soft, reduction="batchmean")
        return self.alpha * self.temperature ** 2 * kd_term + (1 - self.alpha) * self.label_loss(logits, hard)
