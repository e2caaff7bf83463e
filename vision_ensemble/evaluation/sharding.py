"""Member inference over a split, batch by batch from the memory-mapped cache (memory stays flat whatever the
split's size), shared by the processes of `accelerate launch evaluation/evaluate.py`: each process runs its
share of the batches, and `gather_for_metrics` brings every probability back to every process in the original
order, the padding Accelerate adds to even out the last shards dropped."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import ImageArrays


def sharded_probabilities(member, arrays: ImageArrays, tta: bool, batch_size: int, accelerator) -> np.ndarray:
    """`member.probabilities` of a split's images, batch by batch, across the processes."""
    batches = accelerator.prepare_data_loader(DataLoader(torch.arange(len(arrays)), batch_size=batch_size),
                                              device_placement=False)
    gathered = []
    # Process p gets batches p, p + P, ...: each step gathers P consecutive batches.
    for indices in tqdm(batches, desc=member.source, unit="batch", leave=False,
                        disable=not accelerator.is_local_main_process or len(batches) < 4):
        images = torch.from_numpy(arrays.gather(indices.numpy())).permute(0, 3, 1, 2)
        probs = member.probabilities(images, tta, batch_size).to(accelerator.device)
        gathered.append(accelerator.gather_for_metrics(probs).cpu())
    return torch.cat(gathered).numpy()
