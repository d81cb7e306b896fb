"""Test-time augmentation: the log-probabilities of a model averaged over views of the batch.

One function for every place that scores a model (training's evaluation, export, deployment), so a run's
reported accuracy is what its exported model computes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def translate(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift a (B, C, H, W) batch by (dy, dx) pixels, filling the border by reflection (as training does)."""
    p = max(abs(dy), abs(dx))
    if p == 0:
        return x
    h, w = x.shape[-2:]
    xp = F.pad(x, (p, p, p, p), mode="reflect")
    return xp[:, :, p - dy : p - dy + h, p - dx : p - dx + w]


def views(x: torch.Tensor, flip: bool = False, shift: int = 0) -> list[torch.Tensor]:
    """The batch itself, its mirror (flip), and each of those shifted by (shift, shift) and (-shift, -shift)."""
    base = [x, x.flip(3)] if flip else [x]
    if shift:
        base += [translate(v, d, d) for v in base for d in (shift, -shift)]
    return base


def tta_logp(model: nn.Module, x: torch.Tensor, flip: bool = False, shift: int = 0) -> torch.Tensor:
    """log of the mean of the model's probabilities over the views (the model returns log-probabilities)."""
    vs = views(x, flip, shift)
    if len(vs) == 1:
        return model(x)
    return torch.logsumexp(torch.stack([model(v).float() for v in vs]), 0) - math.log(len(vs))
