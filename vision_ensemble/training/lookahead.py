"""airbench's Lookahead (`--lookahead`): a slow copy of the network that the trained one is reset to.

Every `every` optimizer steps the slow copy moves toward the network's weights by (1 - decay) and the network
takes the slow copy's values (Zhang et al., 2019, "Lookahead Optimizer: k steps forward, 1 step back"), with
airbench's schedule (Jordan, 2024): decay = 0.95^every x progress^3, so it hardly averages while the rate is
high and averages most at the end; the last step of the schedule leaves the network at the slow copy.  Nothing
moves during the warmup (airbench's decay there is under 0.001): a `--time-limit` run, whose horizon is not yet
decided then, stays step for step the run `--epochs N` trains.

Unlike timm's `Lookahead` optimizer wrapper (a fixed rate of 0.5, parameters only), every floating-point
tensor of the state dict moves, BatchNorm's running statistics included, as airbench's does: the statistics the
network is evaluated with then belong to the averaged weights.
"""

from __future__ import annotations

import torch


class Lookahead:
    """`step(num_updates, total_updates, warmup_updates)` after every optimizer step (the counts of the learning-rate
    schedule); checkpointed with the run (`state_dict`/`load_state_dict`, for
    `accelerator.register_for_checkpointing`)."""

    def __init__(self, model: torch.nn.Module, every: int = 5, base_decay: float = 0.95):
        self.model, self.every, self.peak_decay = model, every, base_decay ** every
        self.slow = {name: value.detach().clone() for name, value in model.state_dict().items()
                     if value.is_floating_point()}

    def decay(self, num_updates: int, total_updates: int, warmup_updates: int = 0) -> float | None:
        """The decay of this step: None between updates and in the warmup (where the slow copy follows the
        network), 1.0 (take the slow copy) at the schedule's last step."""
        if num_updates >= total_updates:
            return 1.0
        if num_updates % self.every:
            return None
        if num_updates <= warmup_updates:
            return 0.0
        return self.peak_decay * (num_updates / total_updates) ** 3

    @torch.no_grad()
    def step(self, num_updates: int, total_updates: int, warmup_updates: int = 0) -> None:
        decay = self.decay(num_updates, total_updates, warmup_updates)
        if decay is None:
            return
        for name, value in self.model.state_dict().items():
            if name in self.slow:
                slow = self.slow[name]
                slow.lerp_(value, 1.0 - decay)
                value.copy_(slow)

    def state_dict(self) -> dict:
        return {"slow": self.slow}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state["slow"].items():
            self.slow[name].copy_(value)
