"""Segmentation augmentations that move image and mask together (flips, 90° rotations) plus image-only colour and
H&E stain jitter."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import ColorJitter

__all__ = ["HED_FROM_RGB", "RGB_FROM_HED", "PairedAugment", "hed_jitter", "normalize"]

# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB), as scikit-image's rgb2hed uses them.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_LOG_FLOOR = torch.log(torch.tensor(1e-6, dtype=torch.float64))  # scikit-image's optical-density scale


def hed_jitter(image: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Stain augmentation of an RGB ``(3, H, W)`` image in [0, 1]: concentrations ``c' = alpha * c + beta`` per stain.

    Colour deconvolution into haematoxylin / eosin / DAB optical densities (Beer–Lambert with Ruifrok's
    vectors, scikit-image's ``rgb2hed`` scale), the per-stain affine change (Tellez et al., 2018), and back
    to RGB, clipped to [0, 1]. ``alpha = 1, beta = 0`` returns the image (up to rounding).

    Example:
        >>> img = torch.rand(3, 8, 8) * 0.8 + 0.1
        >>> out = hed_jitter(img, torch.ones(3), torch.zeros(3))
        >>> out.shape, bool(torch.allclose(out, img, atol=1e-5))
        (torch.Size([3, 8, 8]), True)
    """
    rgb = image.to(torch.float64).clamp(min=1e-6).permute(1, 2, 0)
    stains = (torch.log(rgb) / _LOG_FLOOR) @ HED_FROM_RGB
    stains = stains * alpha.to(torch.float64) + beta.to(torch.float64)
    out = torch.exp((stains @ RGB_FROM_HED) * _LOG_FLOOR).clamp(0.0, 1.0)
    return out.permute(2, 0, 1).to(image.dtype)


class PairedAugment:
    """Random dihedral transform applied identically to ``image (C, H, W)`` and ``mask (H, W)``;
    jitter on the image only.

    Draws from torch's global RNG, so :class:`gdzoo.data.sampling.SeededDataset` makes it reproducible.
    """

    def __init__(self, hflip: float = 0.5, vflip: float = 0.5, rot90: bool = True, color_jitter: float = 0.0,
                 stain_jitter: float = 0.0) -> None:
        self.hflip, self.vflip, self.rot90 = float(hflip), float(vflip), bool(rot90)
        self.color_jitter, self.stain_jitter = float(color_jitter or 0.0), float(stain_jitter or 0.0)

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
        if self.stain_jitter > 0 and image.shape[0] == 3:
            s = self.stain_jitter
            image = hed_jitter(image, 1 + (torch.rand(3) * 2 - 1) * s, (torch.rand(3) * 2 - 1) * s)
        return image.contiguous(), mask.contiguous()

    def __repr__(self) -> str:
        return (f"PairedAugment(hflip={self.hflip}, vflip={self.vflip}, rot90={self.rot90}, "
                f"color_jitter={self.color_jitter}, "
                f"stain_jitter={self.stain_jitter})")


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(image - mean) / std`` per channel of a ``(C, H, W)`` float image."""
    mean_t = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - mean_t) / std_t
