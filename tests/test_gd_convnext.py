"""``gd_convnext_atto`` / ``gd_convnext_atto_k31``: timm's ConvNeXt-atto with GD depthwise convolutions (issue #21).

The reference is timm itself: everything but ``conv_dw`` is timm's ConvNeXt (same state-dict keys and shapes),
and once reparameterized the GD model *is* a timm ``convnext_atto`` (its weights load strict into one and give
the same logits).
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from timm.utils.model import reparameterize_model

from gdzoo import GDConv2d

pytestmark = pytest.mark.usefixtures("single_thread")

WIDTHS = [40] * 2 + [80] * 2 + [160] * 6 + [320] * 2  # channels of the 12 blocks of ConvNeXt-atto


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_size_costs_no_parameters() -> None:
    """7×7 and 31×31 GD models have the same count; free-form 31×31 grows by Σ C (31² − 7²)."""
    gd7, gd31 = timm.create_model("gd_convnext_atto"), timm.create_model("gd_convnext_atto_k31")
    ff7, ff31 = timm.create_model("convnext_atto"), timm.create_model("convnext_atto", kernel_sizes=31)
    assert _params(gd7) == _params(gd31)
    assert _params(ff31) - _params(ff7) == sum(WIDTHS) * (31**2 - 7**2)
    # each GD depthwise layer: 10 ω + 1 bias per channel, 5 geometry numbers × 10 kernels per basis (C/8 bases)
    assert _params(ff7) - _params(gd7) == sum(c * 49 - (c * 10 + c // 8 * 50) for c in WIDTHS)
    layers = [m for m in gd31.modules() if isinstance(m, GDConv2d)]
    assert [m.groups for m in layers] == WIDTHS and all(m.kernel_size == (31, 31) for m in layers)
    assert [m.num_bases for m in layers] == [c // 8 for c in WIDTHS]


def test_everything_but_conv_dw_is_timms() -> None:
    gd, ff = timm.create_model("gd_convnext_atto"), timm.create_model("convnext_atto")
    strip = lambda sd: {k: tuple(v.shape) for k, v in sd.items() if ".conv_dw." not in k}  # noqa: E731
    assert strip(gd.state_dict()) == strip(ff.state_dict())
    assert gd.pretrained_cfg["first_conv"] == "stem.0" and gd.pretrained_cfg["classifier"] == "head.fc"
    names = gd.no_weight_decay()
    assert "stages.2.blocks.5.conv_dw.sigma_raw" in names and len(names) == 3 * 12


def test_reparameterized_is_timms_convnext() -> None:
    """timm's reparameterize_model turns every GD layer into a depthwise nn.Conv2d: the weights then load strict
    into timm's own convnext_atto (1 channel, 10 classes, 31×31) and give the same logits."""
    torch.manual_seed(0)
    gd = timm.create_model("gd_convnext_atto_k31", in_chans=1, num_classes=10).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        want = gd(x)
        fused = reparameterize_model(gd)
    state = {k.replace(".conv_dw.reparam_conv.", ".conv_dw."): v for k, v in fused.state_dict().items()}
    ff = timm.create_model("convnext_atto", in_chans=1, num_classes=10, kernel_sizes=31).eval()
    ff.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ff(x), want, rtol=1e-4, atol=1e-4)


def test_features_and_training_step() -> None:
    torch.manual_seed(1)
    model = timm.create_model("gd_convnext_atto", features_only=True, in_chans=1)
    feats = model(torch.randn(1, 1, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(40, 16, 16), (80, 8, 8), (160, 4, 4), (320, 2, 2)]
    clf = timm.create_model("gd_convnext_atto", num_classes=3, in_chans=1)
    clf(torch.randn(2, 1, 32, 32)).sum().backward()
    dw = clf.stages[0].blocks[0].conv_dw
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dw.parameters())


def test_bad_channels_per_basis() -> None:
    with pytest.raises(ValueError, match="channels_per_basis=7 does not divide the layer's 40 channels"):
        timm.create_model("gd_convnext_atto", gd_dw_args=dict(channels_per_basis=7))
