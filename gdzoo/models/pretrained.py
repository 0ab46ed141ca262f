"""Loading pretrained weights into gdzoo models: integrity checks of weights files, GD-stem adaptation.

Every gdzoo model is built through :func:`build_gd_model`, which asks :mod:`gdzoo.models.weights_source` once
where the weights come from (shipped, derived, Hugging Face cache / Hub, or the caller's own file), gets a
file checked before any tensor is read, and hands it to timm's own loader (``build_model_with_cfg``) with
:func:`gd_pretrained_filter` (GD/DAU stem ``in_chans`` adaptation). Hub/cache failures become messages a user
can act on. The names that moved to :mod:`~gdzoo.models.weights_source` are re-exported here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import build_model_with_cfg
from timm.models._builder import resolve_pretrained_cfg
from timm.models._manipulate import adapt_input_conv

from ..errors import UserError
from ..layers import DAUConv2d, GDConv2d
from .derived import Derive
from .weights_source import (
    ORG_ENV,
    PUBLISHED_WEIGHTS,
    WEIGHTS_FILE,
    actionable_hub_errors,
    cached_hub_file,
    default_org,
    hub_repo_id,
    resolve,
    resolve_cfg,
    shipped_source,
)

__all__ = [
    "ORG_ENV",
    "PUBLISHED_WEIGHTS",
    "build_gd_model",
    "check_safetensors_header",
    "default_org",
    "gd_pretrained_filter",
    "hub_repo_id",
    "load_weights_file",
    "available_weights_file",
    "local_weights_file",
    "safe_torch_load",
]

_logger = logging.getLogger(__name__)

def load_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    """A state dict from ``.safetensors`` (preferred) or a torch checkpoint read with ``weights_only=True``.

    A missing file, or one that is damaged, not of its kind, or (a torch file) holds objects other than tensors and
    plain containers raises :class:`~gdzoo.errors.UserError` naming it; nothing in it is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    if path.suffix == ".safetensors":
        check_safetensors_header(path)
        try:
            return load_file(path, device="cpu")
        except SafetensorError as e:
            raise UserError(f"{path} is damaged or not a safetensors file ({e}); nothing was loaded") from e
    return safe_torch_load(path)


# safetensors' own limit on the JSON header (the Rust crate refuses larger ones).
SAFETENSORS_MAX_HEADER = 100_000_000


def check_safetensors_header(path: str | os.PathLike) -> None:
    """Raise :class:`~gdzoo.errors.UserError` unless ``path`` starts like a safetensors file: an 8-byte length, then
    a JSON header of that length that fits in the file. Read before anything is allocated, so a header length
    claiming terabytes (a "header bomb") costs nothing."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        raise UserError(f"{path} is damaged or not a safetensors file: {size} bytes, too short for a safetensors "
                        "header")
    length = int.from_bytes(head[:8], "little")
    if length > min(size - 8, SAFETENSORS_MAX_HEADER) or head[8:9] != b"{":
        raise UserError(f"{path} is damaged or not a safetensors file: its header claims {length:,} bytes but the file "
                        f"holds {size:,}" + (" and the header is not JSON" if head[8:9] != b"{" else ""))


def safe_torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)``; a file it refuses or cannot read raises :class:`~gdzoo.errors.UserError`
    naming the file (never suggesting ``weights_only=False``: such a file may run code when unpickled)."""
    import pickle
    import re
    import warnings
    import zipfile

    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's note on an unusual pickle protocol: the error below says what matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        banned = re.search(r"unsupported GLOBAL (\S+)", str(e))
        what = (f"an object gdzoo does not load ({banned.group(1)})" if banned
                else "data other than tensors and plain containers")
        raise UserError(f"{path} is not a gdzoo checkpoint or weights file: it is damaged or holds {what}; "
                        "gdzoo loads only tensors and plain containers. Use a last.pth / .safetensors written by "
                        "gdzoo") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is damaged or not a torch checkpoint ({reason[:200]}); nothing was loaded") from None


def _adapt_in_channels(weight: torch.Tensor, in_dim: int, in_chans: int, base_chans: int) -> torch.Tensor:
    """timm's ``adapt_input_conv`` rule (sum to 1 channel, repeat + rescale up) on a GD weight's input dim."""
    moved = weight.movedim(in_dim, 1)
    shape = moved.shape
    adapted = adapt_input_conv(in_chans, moved.reshape(shape[0], shape[1], -1, 1), base_chans=base_chans)
    return adapted.reshape(shape[0], in_chans, *shape[2:]).movedim(1, in_dim).contiguous()


def _repeat_in_channels(tensor: torch.Tensor, in_chans: int, base_chans: int) -> torch.Tensor:
    """Input channels ``0..in_chans-1`` taken cyclically from ``base_chans`` (dim 1): the channels timm's
    ``adapt_input_conv`` repeats (or truncates) for ``in_chans > 1``, without its rescaling (for geometry)."""
    index = torch.arange(in_chans, device=tensor.device) % base_chans
    return tensor.index_select(1, index).contiguous()


def _adapt_dau_stem(state_dict: dict[str, torch.Tensor], name: str, in_chans: int, base_chans: int) -> bool:
    """A DAU stem's weights and per-input geometry for ``in_chans``; True when anything was adapted.

    The unit weights follow ``adapt_input_conv`` (repeat and rescale by ``base_chans / in_chans``); each input
    channel's σ and μ are those of the source channel it repeats, so every adapted filter is a rescaled copy of
    a source filter. Summing down to one channel cannot be expressed: the units of the summed channels sit at
    different places, so that case raises.
    """
    keys = [name + "." + key for key in ("weight", "mu_raw", "sigma_raw")]
    if not all(key in state_dict and state_dict[key].shape[1] == base_chans for key in keys):
        return False
    if in_chans == 1 and base_chans > 1:
        raise UserError(
            f"cannot adapt the pretrained DAU stem {name} from {base_chans} input channels to 1: each input channel "
            "has its own unit positions and scales, so their sum is no DAU filter of the same size. Use "
            f"in_chans={base_chans} (e.g. a grey image repeated) or in_chans >= 2"
        )
    weight, mu_key, sigma_key = keys
    state_dict[weight] = _adapt_in_channels(state_dict[weight], 1, in_chans, base_chans)
    state_dict[mu_key] = _repeat_in_channels(state_dict[mu_key], in_chans, base_chans)
    state_dict[sigma_key] = _repeat_in_channels(state_dict[sigma_key], in_chans, base_chans)
    return True


def _adapt_gd_stem(state_dict: dict[str, torch.Tensor], name: str, in_chans: int, base_chans: int) -> bool:
    """A GD stem's combination weights for ``in_chans`` (its geometry does not depend on the input channels)."""
    changed = False
    for suffix, in_dim in ((".weight", 1), (".weight_in", 2)):
        key = name + suffix
        if key in state_dict and state_dict[key].shape[in_dim] == base_chans:
            state_dict[key] = _adapt_in_channels(state_dict[key], in_dim, in_chans, base_chans)
            changed = True
    return changed


def gd_pretrained_filter(
    state_dict: dict[str, torch.Tensor], model: nn.Module, adapted: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """Adapt a GD or DAU stem of the pretrained weights to the model's ``in_chans`` (the file was checked before).

    The names of the adapted stems are appended to ``adapted``. (timm adapts plain ``nn.Conv2d`` stems itself.)
    """
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    first_convs = cfg.get("first_conv") or ()
    first_convs = (first_convs,) if isinstance(first_convs, str) else first_convs
    base_chans = (cfg.get("input_size") or (3,))[0]
    for name in first_convs:
        try:
            stem = model.get_submodule(name)
        except AttributeError:
            continue
        if not isinstance(stem, (GDConv2d, DAUConv2d)) or stem.in_channels == base_chans:
            continue
        kind, adapt = ("GD", _adapt_gd_stem) if isinstance(stem, GDConv2d) else ("DAU", _adapt_dau_stem)
        if adapt(state_dict, name, stem.in_channels, base_chans) and adapted is not None and name not in adapted:
            adapted.append(name)
            _logger.info("Adapted %s stem %s pretrained weights from %d to %d channel(s)", kind, name, base_chans,
                         stem.in_channels)
    return state_dict


class _AdaptedStemLogFilter(logging.Filter):
    """Drops timm's "weights already match the model ... Loading unchanged" warning for GD stems gdzoo adapted."""

    def __init__(self, adapted: list[str]) -> None:
        super().__init__()
        self.adapted = adapted

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(f"Pretrained {name} weights already match the model")
                       for name in self.adapted)


@contextmanager
def _quiet_adapted_stems(adapted: list[str]) -> Iterator[None]:
    timm_logger = logging.getLogger("timm.models._builder")
    log_filter = _AdaptedStemLogFilter(adapted)
    timm_logger.addFilter(log_filter)
    try:
        yield
    finally:
        timm_logger.removeFilter(log_filter)


def local_weights_file(
    pretrained_cfg: dict[str, Any], derive: Callable[[str], Derive | None] | None = None
) -> str | None:
    """The local file ``pretrained=True`` loads for this cfg when it is a shipped copy or derived weights, else None.

    None means a Hub file or the caller's own (an explicit ``hf-hub:`` name, a given file or state dict, or the
    Hugging Face cache / Hub). ``derive(model_tag)`` returns the function that derives the weights of a tag that
    may be derived (checked after the Hub's own copy). The full answer is
    :func:`~gdzoo.models.weights_source.resolve_cfg`.

    Example:
        >>> from timm.models import get_pretrained_cfg
        >>> local_weights_file(get_pretrained_cfg('gd_fmnist.fmnist').to_dict()).endswith('/' + WEIGHTS_FILE)
        True
    """
    if pretrained_cfg.get("source") == "hf-hub" or pretrained_cfg.get("file") or pretrained_cfg.get("state_dict"):
        return None
    shipped = shipped_source(pretrained_cfg)
    if shipped is not None:
        return str(shipped.path)
    hub_id = pretrained_cfg.get("hf_hub_id") or ""
    model_tag = f"{pretrained_cfg.get('architecture')}.{pretrained_cfg.get('tag')}"
    if derive is None or not hub_id or derive(model_tag) is None:
        return None
    if cached_hub_file(hub_id, pretrained_cfg.get("hf_hub_filename") or WEIGHTS_FILE) is not None:
        return None
    source = resolve_cfg(pretrained_cfg, derive)
    return str(source.path) if source is not None and source.kind == "derived" else None


def available_weights_file(name: str) -> str | None:
    """Where ``name``'s (``'<model>[.<tag>]'``) pretrained weights are on this machine, without deriving or downloading.

    A shipped copy, cached derived weights, or the Hugging Face cache; None when none of them holds them
    (or the model has no pretrained weights). A shipped or derived copy is checked; a Hub file when it is loaded.

    Example:
        >>> available_weights_file('gd_fmnist').endswith('gd_fmnist.fmnist/' + WEIGHTS_FILE)
        True
    """
    source = resolve(name, download=False)
    return None if source is None else str(source.path)


def build_gd_model(
    model_cls: Callable[..., nn.Module],
    variant: str,
    pretrained: bool = False,
    pretrained_filter_fn: Callable | None = None,
    derive: Callable[[str], Derive | None] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """timm's ``build_model_with_cfg`` with gdzoo's weight resolution, pretrained filter and actionable errors.

    The weights are resolved once (:func:`~gdzoo.models.weights_source.resolve_cfg`) and checked before timm
    reads them; timm then loads that file. ``derive(model_tag)``: the function deriving that tag's weights when
    neither shipped nor on the Hub (None for tags that cannot be derived).
    """
    adapted: list[str] = []

    def filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        if pretrained_filter_fn is not None:
            state_dict = pretrained_filter_fn(state_dict, model)
        return gd_pretrained_filter(state_dict, model, adapted)

    if not pretrained:
        return build_model_with_cfg(model_cls, variant, pretrained=False, pretrained_filter_fn=filter_fn, **kwargs)
    resolved = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
        pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
    ).to_dict()
    source = resolve_cfg(resolved, derive)
    # timm loads an explicit hf-hub: name from the Hub whatever the cfg's file says: it finds the file just checked.
    if source is not None and source.kind != "file" and resolved.get("source") != "hf-hub":
        kwargs["pretrained_cfg_overlay"] = {**(kwargs.get("pretrained_cfg_overlay") or {}), "file": str(source.path)}
    with actionable_hub_errors(resolved), _quiet_adapted_stems(adapted):
        return build_model_with_cfg(model_cls, variant, pretrained=True, pretrained_filter_fn=filter_fn, **kwargs)
