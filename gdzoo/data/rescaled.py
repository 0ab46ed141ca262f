"""Rescaled test sets: every image resized about its centre by one factor ``s`` and placed on a fixed canvas.

The test protocol of scale generalisation (Perzanowski & Lindeberg, arXiv 2409.11140; docs/scale.md says what
of it could be checked): a network trained at scale 1 is tested on copies of the test set, each rescaled by a
single factor ``s`` from 1/2 to 2, all on one canvas that holds the largest copy.

The resampling is written as two 1-D interpolation matrices (rows, then columns) so that the scale and the
centre are exact for any ``s`` (``F.interpolate`` to a rounded size would change the scale by up to a pixel
and shift the centre by half a pixel): output pixel ``o`` samples the input at ``c_in + (o − c_out)/s``, the
image is zero outside its 28×28 frame (Fashion-MNIST's background), and when shrinking the kernel is
stretched by ``1/s`` (antialiasing, as PIL and ``F.interpolate(..., antialias=True)``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["INTERPOLATIONS", "PROTOCOL_SCALES", "interpolation_matrix", "rescale_on_canvas"]

INTERPOLATIONS = ("bilinear", "bicubic")
PROTOCOL_SCALES = tuple(2.0 ** (k / 4) for k in range(-4, 5))  # 1/2 … 2 in steps of 2^(1/4)


def _kernel(t: torch.Tensor, interpolation: str) -> torch.Tensor:
    """The 1-D interpolation kernel: triangle (bilinear) or Keys' cubic with a = −0.5 (bicubic, as PIL)."""
    t = t.abs()
    if interpolation == "bilinear":
        return (1 - t).clamp_min(0)
    a = -0.5
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def interpolation_matrix(size_in: int, size_out: int, scale: float, interpolation: str = "bicubic",
                         antialias: bool = True) -> torch.Tensor:
    """``(size_out, size_in)`` float64 weights: row ``o`` resamples a zero-padded signal at ``c_in + (o − c_out)/s``.

    Example:
        >>> interpolation_matrix(28, 72, 2.0).shape
        torch.Size([72, 28])
        >>> torch.allclose(interpolation_matrix(5, 9, 1.0), torch.eye(9, dtype=torch.float64)[:, 2:7])  # centred copy
        True
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    stretch = max(1.0, 1.0 / scale) if antialias else 1.0  # kernel widened when shrinking (a low-pass first)
    centre_in, centre_out = (size_in - 1) / 2, (size_out - 1) / 2
    source = centre_in + (torch.arange(size_out, dtype=torch.float64) - centre_out) / scale  # (out,)
    # the weights of every output over ALL integer inputs (the signal is zero outside its frame): their sum
    # normalises, so a constant inside the frame stays constant and the frame's edge is a true edge
    reach = math.ceil(2 * stretch) + 1
    lo, hi = math.floor(float(source.min())) - reach, math.ceil(float(source.max())) + reach
    taps = torch.arange(lo, hi + 1, dtype=torch.float64)
    weights = _kernel((taps[None, :] - source[:, None]) / stretch, interpolation)
    weights = weights / weights.sum(dim=1, keepdim=True)
    inside = (taps >= 0) & (taps < size_in)
    return weights[:, inside]


def rescale_on_canvas(images: torch.Tensor, scale: float, canvas: int = 72, interpolation: str = "bicubic",
                      antialias: bool = True) -> torch.Tensor:
    """``images`` (N, C, H, W) resized by ``scale`` about their centre onto a ``canvas × canvas`` zero background.

    Returns float32. uint8 images are read as ``value / 255`` and the result is clamped to [0, 1] (bicubic
    overshoots at edges; a stored image could not hold those values); floating-point images are not clamped.

    Example:
        >>> x = torch.zeros(1, 1, 28, 28); x[..., 9:19, 9:19] = 1   # a centred 10×10 square
        >>> y = rescale_on_canvas(x, 2.0)
        >>> y.shape, round(float(y.sum()))  # 20×20 on the 72×72 canvas
        (torch.Size([1, 1, 72, 72]), 400)
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if isinstance(canvas, bool) or not isinstance(canvas, int) or canvas < 1:
        raise ValueError(f"canvas must be a positive int (pixels), got {canvas!r}")
    stored = images.dtype == torch.uint8
    x = images.float() / 255 if stored else images.float()
    rows = interpolation_matrix(x.shape[-2], canvas, scale, interpolation, antialias).to(torch.float32)
    cols = interpolation_matrix(x.shape[-1], canvas, scale, interpolation, antialias).to(torch.float32)
    out = torch.einsum("oh,nchw,pw->ncop", rows, x, cols)
    return out.clamp(0.0, 1.0) if stored else out

