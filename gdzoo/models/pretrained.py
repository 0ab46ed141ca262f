"""Loading pretrained weights into gdzoo models: integrity checks, GD-stem channel adaptation, clear errors.

Every gdzoo model is built through :func:`build_gd_model`, which runs timm's own loader
(``build_model_with_cfg``) with :func:`gd_pretrained_filter` and turns Hub/cache failures into
messages a user can act on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import build_model_with_cfg
from timm.models._builder import resolve_pretrained_cfg
from timm.models._hub import hf_split
from timm.models._manipulate import adapt_input_conv

from .._io import sha256_file
from ..layers import GDConv2d

__all__ = [
    "PUBLISHED_WEIGHTS",
    "build_gd_model",
    "default_org",
    "gd_pretrained_filter",
    "hub_repo_id",
    "load_weights_file",
    "verify_cached_weights",
]

ORG_ENV = "GDZOO_HF_ORG"

# '<model>.<tag>' of every weights/<model>.<tag>/ folder published to the Hub (tests keep the two equal).
PUBLISHED_WEIGHTS: frozenset[str] = frozenset({"ff_fmnist.fmnist", "gd_fmnist.fmnist", "gd_fmnist_sep.fmnist", "gd_unet.monuseg", "rfnn_fmnist.fmnist", "unet5.monuseg"})


def default_org() -> str:
    """The Hub organisation of gdzoo's weights: ``$GDZOO_HF_ORG`` or ``'gdzoo'``."""
    return os.environ.get(ORG_ENV) or "gdzoo"


def hub_repo_id(model_name: str, tag: str) -> str:
    """``<org>/<model>.<tag>``: the Hub repo holding one model's weights for one tag."""
    return f"{default_org()}/{model_name}.{tag}"


def load_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    """A state dict from ``.safetensors`` (preferred) or a torch checkpoint read with ``weights_only=True``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def verify_cached_weights(pretrained_cfg: dict[str, Any]) -> None:
    """Raise if the cached Hub weights file's sha256 differs from its blob name (the Hub's ETag)."""
    hub_id, filename = pretrained_cfg.get("hf_hub_id"), pretrained_cfg.get("hf_hub_filename")
    if not hub_id or not filename:
        return
    repo_id, revision = hf_split(hub_id)
    cached = try_to_load_from_cache(repo_id, filename, revision=revision)
    if not isinstance(cached, str):
        return
    blob = Path(cached).resolve()
    if len(blob.name) == 64 and sha256_file(blob) != blob.name:
        raise RuntimeError(
            f"Cached weights {filename} of {repo_id} are corrupted: sha256 of {blob} differs from the "
            f"Hub's hash {blob.name}. Delete that file and download again, or re-run `gdzoo hub seed`."
        )


def _adapt_in_channels(weight: torch.Tensor, in_dim: int, in_chans: int, base_chans: int) -> torch.Tensor:
    """timm's ``adapt_input_conv`` rule (sum to 1 channel, repeat + rescale up) on a GD weight's input dim."""
    moved = weight.movedim(in_dim, 1)
    shape = moved.shape
    adapted = adapt_input_conv(in_chans, moved.reshape(shape[0], shape[1], -1, 1), base_chans=base_chans)
    return adapted.reshape(shape[0], in_chans, *shape[2:]).movedim(1, in_dim).contiguous()


def gd_pretrained_filter(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Check the cached file's integrity, then adapt a GD stem to the model's ``in_chans``."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    verify_cached_weights(cfg)
    first_convs = cfg.get("first_conv") or ()
    first_convs = (first_convs,) if isinstance(first_convs, str) else first_convs
    base_chans = (cfg.get("input_size") or (3,))[0]
    for name in first_convs:
        try:
            stem = model.get_submodule(name)
        except AttributeError:
            continue
        if not isinstance(stem, GDConv2d) or stem.in_channels == base_chans:
            continue
        for suffix, in_dim in ((".weight", 1), (".weight_in", 2)):
            key = name + suffix
            if key in state_dict and state_dict[key].shape[in_dim] == base_chans:
                state_dict[key] = _adapt_in_channels(state_dict[key], in_dim, stem.in_channels, base_chans)
    return state_dict


@contextmanager
def _actionable_hub_errors(pretrained_cfg: dict[str, Any]) -> Iterator[None]:
    hub_id = pretrained_cfg.get("hf_hub_id", "?")
    filename = pretrained_cfg.get("hf_hub_filename", "model.safetensors")
    folder = f"weights/{hub_id.split('/')[-1]}"
    try:
        yield
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise RuntimeError(
            f"Pretrained weights {hub_id} ({filename}) are not in the Hugging Face cache and the Hub cannot be "
            f"reached (offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}). On a machine with "
            f"the weights folder, run `gdzoo hub seed {folder}` (with HF_HOME/HF_HUB_CACHE set to this node's "
            "cache), or download once with network access."
        ) from e
    except RevisionNotFoundError as e:
        raise RuntimeError(f"Hub repo {hub_id} has no such revision: {e}") from e
    except EntryNotFoundError as e:
        raise RuntimeError(f"Hub repo {hub_id} has no file {filename!r} (404): {e}") from e
    except RepositoryNotFoundError as e:
        raise RuntimeError(f"Hub repo {hub_id} does not exist or is private (404), needed for {filename!r}: {e}") from e
    except SafetensorError as e:
        raise RuntimeError(
            f"Weights {filename} of {hub_id} are corrupted or truncated ({e}); nothing was loaded. "
            "Delete the cached file and download again, or re-run `gdzoo hub seed`."
        ) from e


def build_gd_model(
    model_cls: Callable[..., nn.Module],
    variant: str,
    pretrained: bool = False,
    pretrained_filter_fn: Callable | None = None,
    **kwargs: Any,
) -> nn.Module:
    """timm's ``build_model_with_cfg`` with gdzoo's pretrained filter and actionable load errors."""

    def filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        if pretrained_filter_fn is not None:
            state_dict = pretrained_filter_fn(state_dict, model)
        return gd_pretrained_filter(state_dict, model)

    if not pretrained:
        return build_model_with_cfg(model_cls, variant, pretrained=False, pretrained_filter_fn=filter_fn, **kwargs)
    resolved = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get("pretrained_cfg"), pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay")
    )
    with _actionable_hub_errors(resolved.to_dict()):
        return build_model_with_cfg(model_cls, variant, pretrained=True, pretrained_filter_fn=filter_fn, **kwargs)
