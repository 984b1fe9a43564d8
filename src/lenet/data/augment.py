"""Data augmentation on the device, a whole batch at once: no per-image Python, no DataLoader.

    translate   random shifts of up to N pixels, zeros coming in (a random crop of the
                image padded by N): one affine transform per image
    rotate, scale, shear
                small random affine distortions, as LeCun et al. (1998) distorted
                MNIST: degrees, a fraction of the size, degrees; all the geometric ones
                are one affine matrix per image and one grid_sample per batch
    flip        mirror left-right with probability 1/2 (refused for MNIST: digits
                are not mirror-symmetric)
    erase       random erasing (cutout): with probability p, a box of up to erase_size
                of the side is set to the background (zero)

Pixels are augmented on their 0..255 scale, before normalisation, so the zeros that
shifting and erasing bring in are the datasets' own background. Every random number
comes from one generator seeded from the run's seed and saved in each checkpoint, so a
--deterministic run repeats exactly and a resumed run continues bitwise.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..configuration.base import Strict

# --augment NAMES: what each name turns on, at the strength the presets were tuned with.
NAMED = {
    "crop": {"translate": 2},
    "flip": {"flip": True},
    "affine": {"rotate": 10.0, "scale": 0.1, "shear": 10.0},
    "erase": {"erase": 0.5},
}


class AugmentConfig(Strict):
    """data.augment: all off by default (the chapter trains on the images as they are)."""

    translate: int = 0  # pixels, up and down, left and right
    flip: bool = False
    rotate: float = 0.0  # degrees, either way
    scale: float = 0.0  # fraction, either way: 0.1 = 90% to 110%
    shear: float = 0.0  # degrees, either way
    erase: float = 0.0  # probability of erasing a box
    erase_size: float = 0.4  # the box's side, at most, as a fraction of the image's
    force_flip: bool = False  # flip even digits (MNIST), where mirrored images are other shapes

    @property
    def active(self) -> bool:
        return bool(self.translate or self.flip or self.rotate or self.scale or self.shear or self.erase)

    @property
    def geometric(self) -> bool:
        return bool(self.translate or self.rotate or self.scale or self.shear)


def named(names: str | list[str]) -> dict[str, object]:
    """"crop,flip" -> the fields those names set (ValueError naming an unknown one)."""
    words = names.split(",") if isinstance(names, str) else list(names)
    fields: dict[str, object] = {}
    for word in (w.strip() for w in words if w.strip()):
        if word not in NAMED:
            raise ValueError(f"unknown augmentation {word!r}; choose from {', '.join(NAMED)}")
        fields.update(NAMED[word])
    return fields


class Augmenter:
    """``augment(images) -> float pixels``: images (..., 1, H, W) uint8 -> float32, the
    same shape, each image transformed on its own. Draws from ``generator`` only."""

    def __init__(self, cfg: AugmentConfig, generator: torch.Generator):
        self.cfg, self.generator = cfg, generator

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator) * (high - low) + low

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        shape = images.shape
        x = images.reshape(-1, *shape[-3:]).float()  # (N, C, H, W), pixels 0..255
        n, device = x.shape[0], x.device
        c = self.cfg
        if c.geometric:
            # Shifts alone land on whole pixels: "nearest" copies them exactly, where
            # bilinear would smear each pixel by the grid's rounding (1e-6 of a neighbour).
            smooth = c.rotate or c.scale or c.shear
            x = nn.functional.grid_sample(x, self._grid(n, x.shape, device), mode="bilinear" if smooth else "nearest",
                                          padding_mode="zeros", align_corners=False)
        if c.flip:
            flip = (torch.rand(n, generator=self.generator) < 0.5).to(device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if c.erase:
            x = x * ~self._boxes(n, x.shape[-2], x.shape[-1], device)
        return x.reshape(shape)

    def _grid(self, n: int, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """Sampling grids (N, H, W, 2) of one random affine map per image (output -> input)."""
        c = self.cfg
        height, width = shape[-2], shape[-1]
        angle = self._uniform(n, -c.rotate, c.rotate) * math.pi / 180
        shear = self._uniform(n, -c.shear, c.shear) * math.pi / 180
        zoom = self._uniform(n, 1 - c.scale, 1 + c.scale)
        # Whole-pixel shifts, in the [-1, 1] units of affine_grid (one pixel = 2 / width).
        dx = torch.randint(-c.translate, c.translate + 1, (n,), generator=self.generator) * 2.0 / width
        dy = torch.randint(-c.translate, c.translate + 1, (n,), generator=self.generator) * 2.0 / height
        cos, sin = torch.cos(angle), torch.sin(angle)
        # rotation x shear x zoom; its inverse maps output pixels back to input pixels
        a = torch.stack([torch.stack([cos, -sin + cos * torch.tan(shear)], -1),
                         torch.stack([sin, cos + sin * torch.tan(shear)], -1)], -2) / zoom.view(-1, 1, 1)
        theta = torch.cat([a, torch.stack([dx, dy], -1).unsqueeze(-1)], -1)  # (N, 2, 3)
        return nn.functional.affine_grid(theta.to(device), [n, shape[1], height, width], align_corners=False)

    def _boxes(self, n: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(N, 1, H, W) True inside each image's erased box (no box where not erased)."""
        c = self.cfg
        erase = torch.rand(n, generator=self.generator) < c.erase
        side_h = (self._uniform(n, 0.1, c.erase_size) * height).round().clamp(min=1)
        side_w = (self._uniform(n, 0.1, c.erase_size) * width).round().clamp(min=1)
        top = (torch.rand(n, generator=self.generator) * (height - side_h + 1)).floor()
        left = (torch.rand(n, generator=self.generator) * (width - side_w + 1)).floor()
        rows = torch.arange(height).view(1, -1, 1)
        cols = torch.arange(width).view(1, 1, -1)
        inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + side_h).view(-1, 1, 1))
                  & (cols >= left.view(-1, 1, 1)) & (cols < (left + side_w).view(-1, 1, 1)))
        return (inside & erase.view(-1, 1, 1)).unsqueeze(1).to(device)


def augmented_examples(images: torch.Tensor, cfg: AugmentConfig, seed: int = 0, versions: int = 3) -> torch.Tensor:
    """(N, 1 + versions, H, W) uint8 for grey images ((N, 1 + versions, C, H, W) for colour):
    each image, then ``versions`` augmentations of it, as training would draw them (from a
    generator seeded with ``seed``)."""
    augmenter = Augmenter(cfg, torch.Generator().manual_seed(seed))
    views = [images.float()] + [augmenter(images) for _ in range(versions)]
    grid = torch.stack(views, 1)
    if images.ndim < 4 or images.shape[1] == 1:
        grid = grid.reshape(len(images), 1 + versions, *images.shape[-2:])
    return grid.round().clamp(0, 255).to(torch.uint8)
