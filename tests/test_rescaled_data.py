"""The rescaled test sets' geometry: exact centred copies at scale 1, torch's resize where the canvas makes it exact,
and a centred square of known size that comes out ``s`` times as wide, centred, for every protocol scale."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gdzoo.data.rescaled import PROTOCOL_SCALES, interpolation_matrix, rescale_on_canvas


def test_protocol_scales_span_a_factor_of_four_in_quarter_octaves() -> None:
    assert len(PROTOCOL_SCALES) == 9
    assert PROTOCOL_SCALES[0] == pytest.approx(0.5) and PROTOCOL_SCALES[4] == 1.0 and PROTOCOL_SCALES[-1] == 2.0
    ratios = [b / a for a, b in zip(PROTOCOL_SCALES, PROTOCOL_SCALES[1:])]
    assert ratios == pytest.approx([2 ** 0.25] * 8)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_scale_one_is_the_image_centred_on_the_canvas(interpolation: str) -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    out = rescale_on_canvas(images, 1.0, canvas=72, interpolation=interpolation)
    assert out.shape == (3, 1, 72, 72) and out.dtype == torch.float32
    torch.testing.assert_close(out[..., 22:50, 22:50], images.float() / 255, rtol=0, atol=1e-6)
    out[..., 22:50, 22:50] = 0
    assert out.abs().max() < 1e-6


@pytest.mark.parametrize(("scale", "interpolation", "antialias"), [
    (2.0, "bilinear", False), (2.0, "bicubic", True), (0.5, "bilinear", True), (0.5, "bicubic", True)])
def test_matches_torch_resize_where_the_canvas_makes_it_exact(scale: float, interpolation: str,
                                                               antialias: bool) -> None:
    """Pad the 28×28 image with zeros to 72/s, then ``F.interpolate`` by ``s`` gives the 72×72 canvas directly."""
    torch.manual_seed(1)
    images = torch.rand(2, 1, 28, 28)
    pad = (round(72 / scale) - 28) // 2
    reference = F.interpolate(F.pad(images, (pad,) * 4), scale_factor=scale, mode=interpolation,
                              antialias=antialias, align_corners=False)
    assert reference.shape[-1] == 72
    got = rescale_on_canvas(images, scale, canvas=72, interpolation=interpolation, antialias=antialias)
    torch.testing.assert_close(got, reference, rtol=0, atol=2e-6)


def _half_max_edges(profile: torch.Tensor) -> tuple[float, float]:
    """Where the profile first and last crosses 0.5 (linear interpolation between samples)."""
    above = (profile >= 0.5).nonzero().flatten()
    first, last = int(above[0]), int(above[-1])
    left = first - 1 + (0.5 - profile[first - 1]) / (profile[first] - profile[first - 1])
    right = last + (profile[last] - 0.5) / (profile[last] - profile[last + 1])
    return float(left), float(right)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("scale", PROTOCOL_SCALES)
def test_a_centred_square_of_side_10_is_10s_wide_and_centred(scale: float, interpolation: str) -> None:
    square = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    square[..., 9:19, 9:19] = 255  # edges at 8.5 and 18.5: side 10, centre 13.5
    out = rescale_on_canvas(square, scale, canvas=72, interpolation=interpolation)[0, 0]
    for profile in (out[36], out[:, 36]):  # a row and a column through the middle
        left, right = _half_max_edges(profile.double())
        assert right - left == pytest.approx(10 * scale, abs=0.3)
        assert (left + right) / 2 == pytest.approx(35.5, abs=1e-4)  # the canvas centre
    assert out[36, 36] == pytest.approx(1.0, abs=1e-6)  # the inside stays 1 (weights are normalised)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=r"interpolation must be one of \('bilinear', 'bicubic'\), got 'nearest'"):
        interpolation_matrix(28, 72, 1.0, "nearest")
    with pytest.raises(ValueError, match=r"scale must be a finite number > 0, got 0"):
        rescale_on_canvas(torch.zeros(1, 1, 28, 28), 0, canvas=72)
    with pytest.raises(ValueError, match=r"canvas must be a positive int"):
        rescale_on_canvas(torch.zeros(1, 1, 28, 28), 1.0, canvas=72.0)
    with pytest.raises(ValueError, match=r"images must be \(N, C, H, W\)"):
        rescale_on_canvas(torch.zeros(28, 28), 1.0)
