"""Exponential moving average of a network's weights, for GAN and classifier training alike.

Averaging G over the last few hundred steps smooths the oscillation of adversarial training
(ProGAN/StyleGAN2-ADA): the averaged copy, not the trained one, is what synthesis uses. A classifier's
averaged weights are what validation scores and what the saved model holds (`clf.*.ema_decay`), a
cheap stand-in for an ensemble of the last epochs (Polyak averaging; timm's ModelEma).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Keeps `ema_model`, a frozen copy of `model` whose parameters follow an exponential average.

    After every optimiser step call `update()`: each parameter becomes
    decay * ema + (1 - decay) * current, and buffers (BN running statistics, spectral-norm vectors)
    are copied as they are, because averaging running statistics has no meaning.

    Args:
        model: the trained network (its parameters are read, never written).
        decay: weight of the old average, in [0, 1); 0.999 averages roughly the last 1000 steps.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.model = model
        self.decay = decay
        self.ema_model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int | None) -> float:
        """The decay of update number `step` (1-based): min(decay, (1 + step) / (10 + step)).

        The warm-up lets a short run (a few hundred steps) still average instead of staying near
        its initial weights; `None` means no warm-up.
        """
        if step is None:
            return self.decay
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int | None = None) -> None:
        """Move the average one step towards the current weights (`step`: see `decay_at`)."""
        decay = self.decay_at(step)
        params = dict(self.model.named_parameters())
        for name, ema_param in self.ema_model.named_parameters():
            ema_param.lerp_(params[name].detach(), 1.0 - decay)
        buffers = dict(self.model.named_buffers())
        for name, ema_buffer in self.ema_model.named_buffers():
            ema_buffer.copy_(buffers[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (what a checkpoint stores next to the trained ones)."""
        return self.ema_model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.ema_model.load_state_dict(state)
