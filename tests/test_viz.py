"""gdzoo.viz: PNG pictures of a layer's basis and filters (size, validity, content, errors)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from PIL import Image

from gdzoo.layers import GDConv2d
from gdzoo.viz import BASIS_HEADER, FILTERS_HEADER, figure_size, plot_basis, plot_filters

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def expected_pixels(nrows: int, ncols: int, cell: float, header: float, dpi: int) -> tuple[int, int]:
    width, height = figure_size(nrows, ncols, cell, header)
    return round(width * dpi), round(height * dpi)


def check_png(path, size: tuple[int, int]) -> Image.Image:
    """A valid, non-empty PNG of ``size`` (±1 px for rounding) with red and blue (signed) kernel pixels."""
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.verify()
    img = Image.open(path)
    assert img.format == "PNG"
    assert abs(img.size[0] - size[0]) <= 1 and abs(img.size[1] - size[1]) <= 1, (img.size, size)
    rgb = torch.tensor(list(img.convert("RGB").getdata()), dtype=torch.int32)
    red = ((rgb[:, 0] - rgb[:, 2]) > 80).sum().item()
    blue = ((rgb[:, 2] - rgb[:, 0]) > 80).sum().item()
    assert red > 50 and blue > 50, "kernels with positive and negative lobes should show red and blue"
    return img


@pytest.fixture
def layer() -> GDConv2d:
    torch.manual_seed(0)
    return GDConv2d(3, 8, 5, num_bases=2, order=2)


def test_plot_basis(tmp_path, layer):
    target = tmp_path / "nested" / "basis.png"  # parent folders are created
    out = plot_basis(layer, target, dpi=40)
    assert out == target
    check_png(out, expected_pixels(2, 6, 1.3, BASIS_HEADER, 40))  # B rows × N = 6 kernels


def test_plot_basis_max_bases_and_cell(tmp_path):
    torch.manual_seed(1)
    layer = GDConv2d(2, 12, 7, num_bases=3, order=1, separated=True)
    out = plot_basis(layer, str(tmp_path / "b.png"), max_bases=2, cell=1.0, dpi=50)
    check_png(out, expected_pixels(2, 3, 1.0, BASIS_HEADER, 50))


def test_plot_filters(tmp_path, layer):
    out = plot_filters(layer, tmp_path / "filters.png", max_out=3, max_in=2, dpi=40)
    check_png(out, expected_pixels(3, 2, 0.9, FILTERS_HEADER, 40))


def test_plot_filters_clamps_to_layer(tmp_path, layer):
    out = plot_filters(layer, tmp_path / "all.png", max_out=100, max_in=100, dpi=30)
    check_png(out, expected_pixels(8, 3, 0.9, FILTERS_HEADER, 30))


def test_plot_filters_reparameterized_and_conv2d(tmp_path, layer):
    layer.reparameterize()
    check_png(plot_filters(layer, tmp_path / "reparam.png", max_out=2, max_in=2, dpi=40),
              expected_pixels(2, 2, 0.9, FILTERS_HEADER, 40))
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3)
    check_png(plot_filters(conv, tmp_path / "conv.png", max_out=2, max_in=3, dpi=40),
              expected_pixels(2, 3, 0.9, FILTERS_HEADER, 40))


def test_plot_leaves_layer_untouched(tmp_path, layer):
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    plot_basis(layer, tmp_path / "b.png", dpi=20)
    plot_filters(layer, tmp_path / "f.png", dpi=20)
    assert layer.training
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in layer.parameters())


def test_errors(tmp_path, layer):
    with pytest.raises(TypeError, match="GDConv2d"):
        plot_basis(nn.Conv2d(1, 1, 3), tmp_path / "x.png")
    with pytest.raises(ValueError, match="max_out"):
        plot_filters(layer, tmp_path / "x.png", max_out=0)
    with pytest.raises(TypeError, match="groups=1"):
        plot_filters(nn.Conv2d(4, 4, 3, groups=4), tmp_path / "x.png")
    layer.reparameterize()
    with pytest.raises(ValueError, match="reparameterized"):
        plot_basis(layer, tmp_path / "x.png")
