"""Natural-image-like inputs (1/f noise, correlated channels) for fitting and checking layers in output space."""

from __future__ import annotations

import torch

__all__ = ["natural_images"]


def natural_images(
    n: int, channels: int = 3, size: int | tuple[int, int] = 64, seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Natural-image-like test inputs: 1/f (pink) noise, channels strongly correlated, unit variance.

    Stand-ins for real images when none are given: natural images have a ~1/f amplitude spectrum and
    highly correlated colour channels, which is what weights a filter's taps in output space.

    Example:
        >>> natural_images(2, 3, 32).shape
        torch.Size([2, 3, 32, 32])
    """
    h, w = (size, size) if isinstance(size, int) else size
    gen = torch.Generator().manual_seed(seed)
    fy = torch.fft.fftfreq(h).abs()[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    amp = 1.0 / torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / max(h, w))
    def pink(k: int) -> torch.Tensor:
        noise = torch.randn(n, k, h, w, generator=gen, dtype=torch.float64)
        return torch.fft.irfft2(torch.fft.rfft2(noise) * amp, s=(h, w))
    luminance = pink(1)
    x = luminance + 0.3 * pink(channels)
    x = (x - x.mean(dim=(-2, -1), keepdim=True)) / x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return x.to(dtype)

