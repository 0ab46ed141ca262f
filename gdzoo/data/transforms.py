"""Image transforms resolved from a model's pretrained cfg with timm
(``resolve_model_data_config``, ``create_transform``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn as nn
from timm.data import create_transform, resolve_model_data_config

__all__ = ["model_in_chans", "resolve_data_config_for", "build_transform"]


def model_in_chans(model: nn.Module) -> int:
    """Input channels the model was built with (its stem conv), else its pretrained cfg's."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    first = cfg.get("first_conv")
    for name in (first,) if isinstance(first, str) else tuple(first or ()):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        chans = getattr(module, "in_channels", None)
        if isinstance(chans, int):
            return chans
    return int((cfg.get("input_size") or (3,))[0])


def _fit_channels(values: Sequence[float], chans: int) -> tuple[float, ...]:
    """Mean/std with one value per input channel (averaged down to 1, or repeated up)."""
    values = tuple(float(v) for v in values)
    if len(values) == chans:
        return values
    if chans == 1:
        return (sum(values) / len(values),)
    if len(values) == 1:
        return values * chans
    raise ValueError(f"cannot map {len(values)} normalisation values onto {chans} input channels")


def resolve_data_config_for(model: nn.Module, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """timm's data config for ``model`` with its real ``in_chans`` and the recipe's overrides.

    ``overrides`` may hold ``img_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct`` (None = keep).
    """
    overrides = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    chans = model_in_chans(model)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = overrides.pop("img_size", None)
    height, width = ((size, size) if isinstance(size, int)
                     else tuple(size or tuple(cfg.get("input_size", (3, 224, 224)))[1:]))
    args: dict[str, Any] = {"input_size": (chans, int(height), int(width)), **overrides}
    for key in ("mean", "std"):
        if key in args:
            args[key] = _fit_channels(args[key], chans)
    config = resolve_model_data_config(model, args=args)
    config["mean"] = _fit_channels(config["mean"], chans)
    config["std"] = _fit_channels(config["std"], chans)
    return config


def build_transform(data_config: Mapping[str, Any], is_training: bool,
                    augment: Mapping[str, Any] | None = None) -> nn.Module:
    """timm's ``create_transform`` (PIL in, normalised tensor out); ``augment`` None disables augmentation."""
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    kwargs: dict[str, Any] = {k: data_config[k] for k in keys if k in data_config}
    if is_training and augment is not None:
        keys = ("scale", "ratio", "hflip", "vflip", "color_jitter", "auto_augment", "re_prob")
        kwargs.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in augment.items() if k in keys})
        return create_transform(is_training=True, **kwargs)
    return create_transform(is_training=is_training, no_aug=is_training, **kwargs)
