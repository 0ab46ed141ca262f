"""Segmentation augmentations that move image and mask together (flips, 90° rotations) plus image-only colour jitter."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import ColorJitter

__all__ = ["PairedAugment", "normalize"]


class PairedAugment:
    """Random dihedral transform applied identically to ``image (C, H, W)`` and ``mask (H, W)``; jitter on the image only.

    Draws from torch's global RNG, so :class:`gdzoo.data.sampling.SeededDataset` makes it reproducible.
    """

    def __init__(self, hflip: float = 0.5, vflip: float = 0.5, rot90: bool = True, color_jitter: float = 0.0) -> None:
        self.hflip, self.vflip, self.rot90 = float(hflip), float(vflip), bool(rot90)
        self.color_jitter = float(color_jitter or 0.0)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.rand(()) < self.hflip:
            image, mask = image.flip(-1), mask.flip(-1)
        if torch.rand(()) < self.vflip:
            image, mask = image.flip(-2), mask.flip(-2)
        if self.rot90 and image.shape[-1] == image.shape[-2]:
            k = int(torch.randint(4, ()))
            image, mask = image.rot90(k, (-2, -1)), mask.rot90(k, (-2, -1))
        if self.color_jitter > 0:
            strength = self.color_jitter
            chroma = (strength, min(strength, 0.5) / 4) if image.shape[0] == 3 else (0.0, 0.0)
            image = ColorJitter(strength, strength, chroma[0], chroma[1])(image)
        return image.contiguous(), mask.contiguous()

    def __repr__(self) -> str:
        return f"PairedAugment(hflip={self.hflip}, vflip={self.vflip}, rot90={self.rot90}, color_jitter={self.color_jitter})"


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(image - mean) / std`` per channel of a ``(C, H, W)`` float image."""
    mean_t = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - mean_t) / std_t
