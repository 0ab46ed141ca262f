"""Real inputs for checking an exported model: Fashion-MNIST test images, MoNuSeg crops, or seeded noise.

The check compares the exported artefact with the eager GD model on these inputs, so they should look like what
the model was trained on (real images exercise the value ranges a deployed model sees); noise is the fallback for
models without such data, or when the data is not on this machine (the report then says so).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CheckInputs", "check_inputs", "find_monuseg", "MONUSEG_SUBDIR"]

MONUSEG_SUBDIR = Path("data") / "nuclei" / "monuseg2018"


@dataclass
class CheckInputs:
    """A batch ``(N, C, H, W)`` of normalised inputs and where it came from (for the report)."""

    images: torch.Tensor
    source: str


def _normalised(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``x`` in [0, 1], normalised with the model's ``pretrained_cfg`` mean / std (its training normalisation)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    chans = x.shape[1]
    mean = torch.tensor((list(cfg.get("mean") or (0.0,)) * chans)[:chans]).view(1, -1, 1, 1)
    std = torch.tensor((list(cfg.get("std") or (1.0,)) * chans)[:chans]).view(1, -1, 1, 1)
    return (x - mean) / std


def _fashion_mnist(model: nn.Module, n: int, size: tuple[int, int, int], data_dir: str | None) -> CheckInputs | None:
    from ..data import find_fashion_mnist, load_fashion_mnist

    try:
        find_fashion_mnist(data_dir, ("test",))
    except FileNotFoundError:
        return None
    images, _ = load_fashion_mnist("test", data_dir)
    x = images[:n].float().div(255.0)
    chans, height, width = size
    if (height, width) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return CheckInputs(_normalised(x.expand(-1, chans, -1, -1).contiguous(), model), f"Fashion-MNIST test[:{n}]")


def find_monuseg(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The MoNuSeg folder (``images/`` + ``masks/``): ``data_dir``, else ``$GDZOO_SHARED_DIR/data/nuclei/monuseg2018``,
    else ``../shared/data/nuclei/monuseg2018`` (where the recipes look, relative to the working folder)."""
    candidates = [Path(data_dir)] if data_dir else []
    if os.environ.get("GDZOO_SHARED_DIR"):
        candidates.append(Path(os.environ["GDZOO_SHARED_DIR"]) / MONUSEG_SUBDIR)
    candidates.append(Path("..") / "shared" / MONUSEG_SUBDIR)
    return next((c for c in candidates if (c / "images").is_dir()), None)


def _monuseg(model: nn.Module, n: int, size: tuple[int, int, int], data_dir: str | None) -> CheckInputs | None:
    from ..data.images import read_image

    folder = find_monuseg(data_dir)
    if folder is None:
        return None
    chans, height, width = size
    files = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff", ".jpg"))
    crops = []
    for i in range(n):  # one crop per image (cycling), at a position that moves with i: varied tissue
        image = read_image(files[i % len(files)], channels=chans)
        if image.height < height or image.width < width:
            continue
        top = (i * 97) % (image.height - height + 1)
        left = (i * 193) % (image.width - width + 1)
        pixels = image.as_uint8(slice(top, top + height), chans)[:, left:left + width]
        crops.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div(255.0))
    if not crops:
        return None
    return CheckInputs(_normalised(torch.stack(crops), model), f"MoNuSeg crops from {folder} ({len(crops)})")


def check_inputs(model: nn.Module, n: int, size: tuple[int, int, int], data_dir: str | None = None,
                 seed: int = 0) -> CheckInputs:
    """``n`` inputs of ``size`` (C, H, W) for ``model``: its training data where gdzoo knows it, else seeded noise.

    Fashion-MNIST feeds the Fashion-MNIST classifiers (their ``pretrained_cfg`` uses its mean), MoNuSeg crops the
    U-nets; ``data_dir`` points at either dataset when it is not in its default place.

    Example:
        >>> import timm, gdzoo
        >>> check_inputs(timm.create_model('gd_convnext_atto'), 2, (3, 32, 32)).images.shape
        torch.Size([2, 3, 32, 32])
    """
    from ..data import FMNIST_MEAN
    from ..models import UNet

    cfg = getattr(model, "pretrained_cfg", None) or {}
    found = None
    if isinstance(model, UNet):
        found = _monuseg(model, n, size, data_dir)
    elif tuple(cfg.get("mean") or ()) == FMNIST_MEAN:
        found = _fashion_mnist(model, n, size, data_dir)
    if found is not None:
        return found
    generator = torch.Generator().manual_seed(seed)
    return CheckInputs(torch.randn(n, *size, generator=generator), f"random normal (seed {seed})")
