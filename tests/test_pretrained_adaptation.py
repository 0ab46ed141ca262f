"""Every published tag loads with another ``in_chans`` and ``num_classes`` (issue #32, item 8).

The expectation is timm's ``adapt_input_conv`` contract, checked on what the layers compute, not on the adapter's
code: the adapted stem's dense kernel for input channel ``c`` is the source kernel of channel ``c % base`` scaled by
``base / in_chans`` (or, down to one channel, the sum over the source channels), so on an image whose channels
are all equal the adapted model's features equal the original model's on the grey image.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file

import gdzoo
from gdzoo.errors import UserError
from gdzoo.hub import export_hub_folder
from gdzoo.models.pretrained import PUBLISHED_WEIGHTS
from gdzoo.models.shipped import shipped_weights_file

NEW_CLASSES = 7


def _dense_kernel(stem: nn.Module) -> torch.Tensor:
    """The ``(out, in, kH, kW)`` kernel a stem convolves with (GD, DAU or plain ``nn.Conv2d``)."""
    return stem.dense_weight() if hasattr(stem, "dense_weight") else stem.weight


def _expected_kernel(source: torch.Tensor, in_chans: int) -> torch.Tensor:
    """timm's ``adapt_input_conv`` rule written out on dense kernels: sum to 1, else repeat and rescale."""
    base = source.shape[1]
    if in_chans == 1:
        return source.sum(dim=1, keepdim=True)
    return torch.stack([source[:, c % base] for c in range(in_chans)], dim=1) * (base / in_chans)


def _grey(chans: int, size: tuple[int, int]) -> torch.Tensor:
    """Two seeded grey images with their one channel repeated ``chans`` times."""
    generator = torch.Generator().manual_seed(5)
    return torch.rand(2, 1, *size, generator=generator).expand(-1, chans, -1, -1).contiguous()


@pytest.mark.parametrize("tag", sorted(PUBLISHED_WEIGHTS))
def test_published_weights_adapt_to_other_in_chans_and_num_classes(tag: str, single_thread: None) -> None:
    original = timm.create_model(tag, pretrained=True).eval()
    cfg = original.pretrained_cfg
    base = cfg["input_size"][0]
    in_chans = 1 if base == 3 else 3
    adapted = timm.create_model(tag, pretrained=True, in_chans=in_chans, num_classes=NEW_CLASSES).eval()
    size = (28, 28) if base == 1 else (64, 64)  # small inputs keep the U-nets fast; any size the model takes works

    # a scale-channel model's module names and feature API are its base model's (gd_fmnist_sc: `.model`)
    original_base, adapted_base = (m.model if isinstance(m, gdzoo.ScaleChannels) else m for m in (original, adapted))
    with torch.no_grad():
        source_stem = original_base.get_submodule(cfg["first_conv"])
        stem = adapted_base.get_submodule(cfg["first_conv"])
        assert stem.in_channels == in_chans
        torch.testing.assert_close(_dense_kernel(stem), _expected_kernel(_dense_kernel(source_stem), in_chans),
                                   rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(adapted_base.forward_features(_grey(in_chans, size)),
                                   original_base.forward_features(_grey(base, size)), rtol=1e-4, atol=1e-4)
        out = adapted(_grey(in_chans, size))
    expected_shape = (2, NEW_CLASSES) if out.dim() == 2 else (2, NEW_CLASSES, *size)
    assert tuple(out.shape) == expected_shape and torch.isfinite(out).all()

    # Everything but the stem and the classifier is the shipped file's, unchanged.
    shipped = load_file(shipped_weights_file(tag))
    skip = (cfg["first_conv"] + ".", cfg["classifier"] + ".")
    kept = {k: v for k, v in adapted.state_dict().items() if not k.startswith(skip) and k in shipped}
    assert len(kept) > 0
    for key, value in kept.items():
        assert torch.equal(value, shipped[key]), key
    head = adapted_base.get_submodule(cfg["classifier"])
    assert head.weight.shape[0] == NEW_CLASSES


def test_dau_stem_refuses_summing_down_to_one_channel(tmp_path, single_thread: None) -> None:
    """3-channel DAU weights into in_chans=1: no same-size DAU filter is the sum, so the error says so."""
    folder = export_hub_folder(timm.create_model("dau_fmnist", in_chans=3), "rgb", tmp_path, org="test")
    cfg = {"file": str(folder.path / "model.safetensors"), "input_size": (3, 28, 28)}
    with pytest.raises(UserError, match=r"DAU stem stem\.conv from 3 input channels to 1"):
        timm.create_model("dau_fmnist", pretrained=True, in_chans=1, pretrained_cfg_overlay=cfg)
