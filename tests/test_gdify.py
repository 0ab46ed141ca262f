"""gdify: real timm / torchvision models keep their semantics, fitted layers follow the replaced convs, clear errors."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Conv2dSame

from gdzoo import GDConv2d, gdify
from gdzoo.layers.fit import natural_images

pytestmark = pytest.mark.usefixtures("single_thread")
FAST = dict(restarts=2, steps=60, polish_steps=0, subspace_candidates=8)


def test_stem_of_resnet18_is_fitted_with_its_semantics() -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=5).eval()
    original = model.conv1
    x = natural_images(2, 3, 32)
    gdify(model, "stem", num_bases=8, order=4, **FAST)
    stem = model.conv1
    assert isinstance(stem, GDConv2d) and stem.stride == (2, 2) and stem.padding == (3, 3) and stem.bias is None
    with torch.no_grad():
        ref = F.conv2d(x, original.weight, None, 2, 3)
        got = stem(x)
    assert got.shape == ref.shape
    measured = float((stem.dense_weight().detach() - original.weight.detach()).norm() / original.weight.detach().norm())
    assert measured == pytest.approx(stem.fit_report.kernel_error, rel=1e-3)
    assert stem.fit_report.kernel_error < 0.9  # random He-init 7x7 filters: white noise, far from Gaussian
    assert model(x).shape == (2, 5)


def test_all_skips_1x1_and_keeps_output_shapes() -> None:
    model = timm.create_model("resnet18", num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    before = model(x).shape
    gdify(model, "all", fit=False, num_bases=1, order=2)
    gd = [n for n, m in model.named_modules() if isinstance(m, GDConv2d)]
    assert len(gd) == 17 and "conv1" in gd  # stem + 16 block convs
    assert set(model.gdify_skipped) == {"layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"}
    assert all("1x1" in why for why in model.gdify_skipped.values())
    assert model(x).shape == before


def test_pattern_and_images_refine_inner_layers() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1, dilation=1))
    ref = net[2]
    images = natural_images(4, 3, 16)
    with torch.no_grad():
        inner_input = net[1](net[0](images))
    gdify(net, r"^2$", num_bases=2, order=2, images=images, refine_steps=30, **FAST)
    assert isinstance(net[2], GDConv2d) and not isinstance(net[0], GDConv2d)
    report = net[2].fit_report
    assert report.output_error is not None and report.output_error <= report.output_error_kernel_fit
    with torch.no_grad():
        r = ref(inner_input)
        measured = (net[2](inner_input) - r).norm() / (r - ref.bias.view(1, -1, 1, 1)).norm()
    assert float(measured) == pytest.approx(report.output_error, rel=1e-3)


def test_torchvision_style_model_by_names() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, (3, 5), padding=(1, 2), padding_mode="reflect"), nn.ReLU())
    gdify(net, ["0"], num_bases=2, order=2, **FAST)
    assert net[0].kernel_size == (3, 5) and net[0].padding_mode == "reflect"


@pytest.mark.parametrize("module, message", [
    (nn.Conv2d(8, 8, 3, groups=8), "groups=8"),
    (nn.Conv2d(8, 8, 1), "1x1"),
    (nn.ConvTranspose2d(8, 8, 3), "transposed"),
    (Conv2dSame(8, 8, 3, stride=2), "overrides nn.Conv2d.forward"),
])
def test_unconvertible_layers_are_named(module: nn.Module, message: str) -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), module)
    with pytest.raises(ValueError, match=rf"cannot convert '1' .*{message}"):
        gdify(net, ["1"], fit=False)


def test_bad_arguments() -> None:
    net = nn.Sequential(nn.Conv2d(3, 6, 3))
    with pytest.raises(ValueError, match="num_bases=4 does not divide the convolution's 6 output channels"):
        gdify(net, "stem", fit=False, num_bases=4)
    with pytest.raises(ValueError, match="matches no convolution"):
        gdify(net, "nothing_like_this", fit=False)
    with pytest.raises(ValueError, match="bad regex"):
        gdify(net, "(", fit=False)
    with pytest.raises(ValueError, match="stride comes from the converted convolution"):
        gdify(net, "stem", fit=False, stride=2)
