"""Augmentation behind one `strength` knob in [0, 1], with two backends sharing the same parameters.

strength 0 = identity; ORIGINAL_STRENGTH (0.5) = the original notebook: HorizontalFlip(p=0.5),
ShiftScaleRotate(shift 0.0625, scale 0.1, rotate 45, reflect border, p=0.5), CoarseDropout(one 16x16 hole
filled with the dataset mean, p=0.5); above it the geometric limits and hole size grow linearly and the
probabilities rise to 1. The flip probability follows the strength (min(0.5, strength)) unless `flip_p`
sets it on its own: a mirror image is a free, label-preserving sample, so short runs with light
augmentation still want it at 0.5.

- "albumentations": per-image uint8 HWC transforms (albumentations 2.x; Affine is 2.x's ShiftScaleRotate),
  meant to run in DataLoader workers.
- "torch": the same operations on a whole normalised batch at once, on the training device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cifarnet.data import MEAN, STD

ORIGINAL_STRENGTH = 0.5
MAX_HOLE = 24  # px; a 32x32 hole would erase the image


@dataclass(frozen=True)
class AugParams:
    flip_p: float
    affine_p: float
    shift: float  # max translation, fraction of the image side
    scale: float  # max relative zoom in or out
    rotate: float  # max rotation, degrees
    cutout_p: float
    hole: int  # side of the square hole, px

    @classmethod
    def from_strength(cls, strength: float, flip_p: float | None = None) -> "AugParams":
        if not 0 <= strength <= 1:
            raise ValueError(f"augmentation strength must be in [0, 1], got {strength}")
        if flip_p is not None and not 0 <= flip_p <= 1:
            raise ValueError(f"flip probability must be in [0, 1], got {flip_p}")
        r = strength / ORIGINAL_STRENGTH  # 1.0 at the original settings
        p = min(1.0, strength / ORIGINAL_STRENGTH * 0.5)  # 0.5 at the original, 1.0 at strength 1
        return cls(
            flip_p=min(0.5, p) if flip_p is None else flip_p,
            affine_p=p,
            shift=0.0625 * r,
            scale=0.1 * r,
            rotate=45.0 * r,
            cutout_p=p,
            hole=min(MAX_HOLE, max(1, round(16 * r))) if strength > 0 else 0,
        )

    @property
    def is_identity(self) -> bool:
        return self.flip_p == 0 and self.affine_p == 0 and self.cutout_p == 0


def albumentations_pipeline(strength: float, flip_p: float | None = None):
    """The original pipeline (scaled by `strength`) on uint8 HWC images."""
    import albumentations as A
    import cv2

    a = AugParams.from_strength(strength, flip_p)
    mean_pixel = tuple(round(255 * m) for m in MEAN)
    return A.Compose(
        [
            A.HorizontalFlip(p=a.flip_p),
            A.Affine(
                translate_percent=(-a.shift, a.shift),
                scale=(1 - a.scale, 1 + a.scale),
                rotate=(-a.rotate, a.rotate),
                border_mode=cv2.BORDER_REFLECT_101,
                p=a.affine_p,
            ),
            A.CoarseDropout(
                num_holes_range=(1, 1),
                hole_height_range=(max(1, a.hole),) * 2,
                hole_width_range=(max(1, a.hole),) * 2,
                fill=mean_pixel,
                p=a.cutout_p,
            ),
        ]
    )


def normalize(images: torch.Tensor, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """uint8 (B, H, W, C) -> normalised float32 (B, C, H, W) on `device`; NHWC memory if channels_last.

    One conversion pass and one fused multiply-add: (x / 255 - mean) / std = x * scale + shift.
    """
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2)  # a view: NHWC memory is channels_last
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    scale, shift = _affine_constants(device)
    out = torch.empty(x.shape, device=device, dtype=torch.float32, memory_format=fmt).copy_(x)
    return torch.addcmul(shift, out, scale, out=out)


_CONSTANTS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _affine_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    device = torch.device(device)
    if device not in _CONSTANTS:
        mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
        _CONSTANTS[device] = ((1 / (255 * std)).float().to(device), (-mean / std).float().to(device))
    return _CONSTANTS[device]


class TorchAugment:
    """Batched flip / affine (reflect border) / cutout, on a normalised (B, C, H, W) batch (`__call__`) or
    straight from the uint8 (B, H, W, C) images (`from_uint8`, the training loop's path: the flip runs on
    uint8, a quarter of the bytes, and nothing is copied twice). Both draw the same random numbers in the
    same order, so for one generator state they give the same batch."""

    def __init__(self, strength: float, flip_p: float | None = None):
        self.params = AugParams.from_strength(strength, flip_p)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.params.is_identity:
            return x
        if self.params.flip_p:
            flip = self._chosen(self.params.flip_p, x.shape[0], gen, x.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        else:
            x = x.clone()  # the rest works in place
        return self._affine_and_cutout(x, gen)

    def from_uint8(
        self, images: torch.Tensor, gen: torch.Generator, device: torch.device, channels_last: bool = True,
        flip: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """uint8 (B, H, W, C) images -> augmented, normalised float32 (B, C, H, W) on `device`. `flip` (B,) bool
        mirrors exactly those images instead of drawing each mirror with the flip probability."""
        images = images.to(device, non_blocking=True)
        if flip is None and self.params.flip_p:
            flip = self._chosen(self.params.flip_p, images.shape[0], gen, images.device)
        if flip is not None:
            images = torch.where(flip.to(images.device).view(-1, 1, 1, 1), images.flip(2), images)
        x = normalize(images, device, channels_last)
        return x if self.params.is_identity else self._affine_and_cutout(x, gen)

    @staticmethod
    def _chosen(p: float, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
        return torch.rand(n, generator=gen, device=device) < p

    def _affine_and_cutout(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """In place on `x` (a batch this class owns)."""
        a, n, dev = self.params, x.shape[0], x.device

        def uniform(lo: float, hi: float, size: int = n) -> torch.Tensor:
            return torch.rand(size, generator=gen, device=dev) * (hi - lo) + lo

        if a.affine_p:
            sel = self._chosen(a.affine_p, n, gen, dev).nonzero().flatten()
            if len(sel):
                x[sel] = self._affine(x[sel], uniform)
        if a.cutout_p:
            x.masked_fill_(self._holes(x, self._chosen(a.cutout_p, n, gen, dev), gen), 0.0)  # 0 = the mean
        return x

    def _affine(self, x: torch.Tensor, uniform) -> torch.Tensor:
        a, m = self.params, x.shape[0]
        angle = uniform(-a.rotate, a.rotate, m) * (math.pi / 180)
        scale = uniform(1 - a.scale, 1 + a.scale, m)
        tx, ty = uniform(-a.shift, a.shift, m) * 2, uniform(-a.shift, a.shift, m) * 2  # [-1, 1] coordinates
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # affine_grid maps output to input coordinates: the inverse of "rotate, scale, then shift".
        theta = torch.stack(
            [torch.stack([cos, sin, -(cos * tx + sin * ty)], 1), torch.stack([-sin, cos, sin * tx - cos * ty], 1)], 1
        )
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
            memory_format=torch.channels_last
        ) else out

    def _holes(self, x: torch.Tensor, sel: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        hole = self.params.hole
        y0 = torch.randint(0, h - hole + 1, (n,), generator=gen, device=x.device)
        x0 = torch.randint(0, w - hole + 1, (n,), generator=gen, device=x.device)
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        in_rows = (rows >= y0[:, None]) & (rows < y0[:, None] + hole)  # (n, h)
        in_cols = (cols >= x0[:, None]) & (cols < x0[:, None] + hole)  # (n, w)
        return (in_rows[:, :, None] & in_cols[:, None, :] & sel.view(n, 1, 1)).unsqueeze(1)  # (n, 1, h, w)


class AlbumentationsDataset(torch.utils.data.Dataset):
    """uint8 HWC images through the albumentations pipeline; batches stay uint8 (cheap to pin and copy)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, strength: float, flip_p: float | None = None):
        self.images = images.numpy()
        self.labels = labels
        self.transform = albumentations_pipeline(strength, flip_p)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.transform(image=self.images[i])["image"]
        return torch.from_numpy(np.ascontiguousarray(img)), self.labels[i]

    def reseed(self, seed: int) -> None:
        self.transform.set_random_seed(seed % 2**32)


def seed_albumentations_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: each worker's seed derives from the loader's seeded generator."""
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(torch.initial_seed())
