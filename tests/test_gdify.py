"""gdify: real timm / torchvision models keep their semantics, fitted layers follow the replaced convs, clear errors."""

from __future__ import annotations

import copy
import pickle

import pytest
import timm
import timm.optim
import torch
import torch.nn as nn
from timm.layers import Conv2dSame

from gdzoo import GDConv2d, gdify
from gdzoo.layers.fit import natural_images

pytestmark = pytest.mark.usefixtures("single_thread")
FAST = dict(restarts=2, steps=60, polish_steps=0, subspace_candidates=8)
GEOMETRY = ("sigma_raw", "mu_raw", "theta_raw")


def _reference_conv(original: nn.Conv2d, gd: GDConv2d) -> nn.Conv2d:
    """The ORIGINAL conv module (its stride, padding, dilation, padding mode) carrying gd's dense kernel and bias."""
    ref = copy.deepcopy(original)
    with torch.no_grad():
        ref.weight.copy_(gd.dense_weight())
        if ref.bias is not None:
            ref.bias.copy_(gd.bias)
    return ref


def _assert_same_semantics(original: nn.Conv2d, gd: GDConv2d, x: torch.Tensor) -> None:
    """gd(x) equals nn.Conv2d's own forward with the original's spatial arguments and gd's weights."""
    with torch.no_grad():
        torch.testing.assert_close(gd(x), _reference_conv(original, gd)(x), rtol=1e-4, atol=1e-5)


def test_stem_of_resnet18_is_fitted_with_its_semantics() -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=5).eval()
    original = model.conv1
    x = natural_images(2, 3, 32)
    gdify(model, "stem", num_bases=8, order=4, **FAST)
    stem = model.conv1
    assert isinstance(stem, GDConv2d) and stem.stride == (2, 2) and stem.padding == (3, 3) and stem.bias is None
    _assert_same_semantics(original, stem, x)
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
    torch.manual_seed(0)
    original = nn.Conv2d(3, 4, (3, 5), padding=(1, 2), padding_mode="reflect")
    net = nn.Sequential(original, nn.ReLU())
    gdify(net, ["0"], num_bases=2, order=2, **FAST)
    assert isinstance(net[0], GDConv2d)
    _assert_same_semantics(original, net[0], torch.randn(2, 3, 11, 13))


@pytest.mark.parametrize("conv_args", [
    dict(kernel_size=3, stride=(2, 1), padding=(2, 0)),
    dict(kernel_size=(3, 5), padding="same", dilation=(2, 1)),
    dict(kernel_size=5, padding="valid", dilation=2, bias=False),
    dict(kernel_size=3, stride=2, padding=1, padding_mode="circular"),
    dict(kernel_size=(5, 3), padding=(2, 1), padding_mode="replicate"),
    dict(kernel_size=(4, 4), stride=3, padding=2, padding_mode="reflect"),
])
def test_converted_layers_keep_the_original_spatial_semantics(conv_args: dict) -> None:
    """Outputs, not attributes: the GD layer equals the original nn.Conv2d run with the GD layer's kernel."""
    torch.manual_seed(0)
    original = nn.Conv2d(3, 4, **conv_args)
    net = nn.Sequential(original)
    gdify(net, "stem", fit=False, num_bases=2, order=2)
    _assert_same_semantics(original, net[0], torch.randn(2, 3, 13, 14))


def test_fitted_layer_reproduces_a_gd_representable_conv() -> None:
    """A conv whose kernel a GD layer can represent exactly: after gdify the two give the same output."""
    torch.manual_seed(0)
    source = GDConv2d(3, 8, 5, num_bases=2, order=2, init="fixed", sigma_init=(1.0, 1.3), mu_init=(0.2, -0.1),
                      theta_init=0.4)
    original = nn.Conv2d(3, 8, 5, stride=2, padding=(1, 2), padding_mode="replicate")
    with torch.no_grad():
        original.weight.copy_(source.dense_weight())
    net = nn.Sequential(original)
    x = torch.randn(2, 3, 17, 16)
    with torch.no_grad():
        expected = original(x)
    gdify(net, "stem", num_bases=2, order=2)
    with torch.no_grad():
        torch.testing.assert_close(net[0](x), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("module, message", [
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


def _group_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict:
    return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))


def test_gdify_keeps_geometry_out_of_timm_weight_decay() -> None:
    """timm's own optimizer factory: GD geometry and the model's own no-decay names get no decay."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=5)
    own = set(model.no_weight_decay())
    assert "pos_embed" in own and "cls_token" in own
    gdify(model, "stem", fit=False, num_bases=4, order=2)
    assert isinstance(model.patch_embed.proj, GDConv2d)
    assert model.no_weight_decay() >= own | {f"patch_embed.proj.{g}" for g in GEOMETRY}
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):  # e.g. ModelEmaV3, torch.save
        assert clone.no_weight_decay() == model.no_weight_decay()
        clone.patch_embed.proj = nn.Conv2d(3, 192, 16, stride=16)  # the clone's names follow the clone
        assert not any(n.startswith("patch_embed.proj.") for n in clone.no_weight_decay())
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=0.1, weight_decay=0.5)
    named = dict(model.named_parameters())
    for name in [*own & set(named), *(f"patch_embed.proj.{g}" for g in GEOMETRY)]:
        assert _group_of(optimizer, named[name])["weight_decay"] == 0.0, name
    assert _group_of(optimizer, named["patch_embed.proj.weight"])["weight_decay"] == 0.5
    before = {n: p.detach().clone() for n, p in named.items()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # zero gradients: only decoupled decay moves anything
    for name in [*(f"patch_embed.proj.{g}" for g in GEOMETRY), "pos_embed", "cls_token"]:
        assert torch.equal(named[name].detach(), before[name]), f"{name} was decayed"
    torch.testing.assert_close(named["patch_embed.proj.weight"].detach(), before["patch_embed.proj.weight"] * 0.95)


def test_gdify_on_resnet_without_own_no_weight_decay() -> None:
    """resnet18 has no ``no_weight_decay``: after gdify it reports exactly the stem's geometry."""
    model = timm.create_model("resnet18", num_classes=5)
    gdify(model, "stem", fit=False, num_bases=8, order=2)
    assert model.no_weight_decay() == {f"conv1.{g}" for g in GEOMETRY}
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", weight_decay=0.05)
    assert all(_group_of(optimizer, getattr(model.conv1, g))["weight_decay"] == 0.0 for g in GEOMETRY)


def test_failed_gdify_leaves_the_model_unchanged() -> None:
    """A later layer that cannot be converted: no earlier layer is replaced; the error names the layer."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    types = [(n, type(m)) for n, m in net.named_modules()]
    with pytest.raises(ValueError, match=r"cannot convert '2' \(Conv2d\).*num_bases=4 does not divide .* 6 output"):
        gdify(net, "all", num_bases=4, order=2, **FAST)
    assert [(n, type(m)) for n, m in net.named_modules()] == types
    assert net.state_dict().keys() == state.keys()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    assert not hasattr(net, "gdify_skipped") and not hasattr(net, "no_weight_decay")
    with pytest.raises(ValueError, match=r"cannot convert '0' \(Conv2d\).*order must be"):
        gdify(net, "all", fit=False, order=-1)
    assert [(n, type(m)) for n, m in net.named_modules()] == types
