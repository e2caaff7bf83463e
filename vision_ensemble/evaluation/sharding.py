"""Member inference shared by the processes of `accelerate launch evaluation/evaluate.py`: each process runs
its share of the batches, and `gather_for_metrics` brings every probability back to every process in the
original order, the padding Accelerate adds to even out the last shards dropped."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader


def sharded_probabilities(member, images: torch.Tensor, tta: bool, batch_size: int, accelerator) -> np.ndarray:
    """`member.probabilities` of uint8 NCHW `images`, computed batch by batch across the processes."""
    batches = accelerator.prepare_data_loader(DataLoader(torch.arange(len(images)), batch_size=batch_size),
                                              device_placement=False)
    gathered = []
    for indices in batches:  # process p gets batches p, p + P, ...: each step gathers P consecutive batches
        probs = member.probabilities(images[indices], tta, batch_size).to(accelerator.device)
        gathered.append(accelerator.gather_for_metrics(probs).cpu())
    return torch.cat(gathered).numpy()
