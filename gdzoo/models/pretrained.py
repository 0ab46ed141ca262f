"""Loading pretrained weights into gdzoo models: where they come from, integrity checks, GD-stem adaptation.

Every gdzoo model is built through :func:`build_gd_model`, which runs timm's own loader
(``build_model_with_cfg``) with :func:`gd_pretrained_filter` and turns Hub/cache failures into
messages a user can act on. ``pretrained=True`` resolves, in this order:

1. an explicit ``hf-hub:`` name, ``pretrained_cfg_overlay=dict(file=...)`` or ``state_dict``: as timm does;
2. a published tag whose copy ships with the code (:mod:`gdzoo.models.shipped`): that file, sha256-checked
   against the manifest, with no network call;
3. a derivable tag (``gd_vgg16.tv_in1k``): the Hub repo if it is cached or reachable, else weights derived
   from their source once and cached (:mod:`gdzoo.models.derived`);
4. otherwise the Hugging Face cache / Hub (``<org>/<model>.<tag>``, org ``$GDZOO_HF_ORG``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import build_model_with_cfg, get_pretrained_cfg
from timm.models._builder import resolve_pretrained_cfg
from timm.models._hub import hf_split
from timm.models._manipulate import adapt_input_conv

from .._io import sha256_file
from ..errors import UserError
from ..layers import DAUConv2d, GDConv2d
from .derived import Derive, cached_derived_file, derive_weights_file
from .shipped import PUBLISHED_ORG, load_manifest, shipped_weights_file

__all__ = [
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
    "verify_cached_weights",
]

_logger = logging.getLogger(__name__)

ORG_ENV = "GDZOO_HF_ORG"

# '<model>.<tag>' of every published weights/<model>.<tag>/ folder: the manifest's keys (tests keep them equal).
PUBLISHED_WEIGHTS: frozenset[str] = frozenset(load_manifest())


def default_org() -> str:
    """The Hub organisation of gdzoo's weights: ``$GDZOO_HF_ORG`` or ``'gdzoo'``."""
    return os.environ.get(ORG_ENV) or "gdzoo"


def hub_repo_id(model_name: str, tag: str) -> str:
    """``<org>/<model>.<tag>``: the Hub repo holding one model's weights for one tag."""
    return f"{default_org()}/{model_name}.{tag}"


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
        raise UserError(f"{path} is damaged or not a safetensors file: {size} bytes, too short for a safetensors header")
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
        what = f"an object gdzoo does not load ({banned.group(1)})" if banned else "data other than tensors and plain containers"
        raise UserError(f"{path} is not a gdzoo checkpoint or weights file: it is damaged or holds {what}; "
                        "gdzoo loads only tensors and plain containers. Use a last.pth / .safetensors written by gdzoo") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is damaged or not a torch checkpoint ({reason[:200]}); nothing was loaded") from None


def _cached_hub_file(hub_id: str, filename: str) -> str | None:
    """The HF cache's copy of ``filename`` of ``hub_id``, or None."""
    repo_id, revision = hf_split(hub_id)
    hit = try_to_load_from_cache(repo_id, filename, revision=revision)
    return hit if isinstance(hit, str) else None


def verify_cached_weights(pretrained_cfg: dict[str, Any]) -> None:
    """Raise if the cached Hub weights file's sha256 differs from its blob name (the Hub's ETag).

    Nothing to check when the weights came from a local ``file`` (shipped and derived files are checked
    before they are loaded).
    """
    hub_id, filename = pretrained_cfg.get("hf_hub_id"), pretrained_cfg.get("hf_hub_filename")
    if not hub_id or not filename or pretrained_cfg.get("file"):
        return
    cached = _cached_hub_file(hub_id, filename)
    if cached is None:
        return
    blob = Path(cached).resolve()
    if len(blob.name) == 64 and sha256_file(blob) != blob.name:
        raise RuntimeError(
            f"Cached weights {filename} of {hf_split(hub_id)[0]} are corrupted: sha256 of {blob} differs from the "
            f"Hub's hash {blob.name}. Delete that file and download again, or re-run `gdzoo hub seed`."
        )


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
    """Check the cached file's integrity, then adapt a GD or DAU stem to the model's ``in_chans``.

    The names of the adapted stems are appended to ``adapted``. (timm adapts plain ``nn.Conv2d`` stems itself.)
    """
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
        return not any(message.startswith(f"Pretrained {name} weights already match the model") for name in self.adapted)


@contextmanager
def _quiet_adapted_stems(adapted: list[str]) -> Iterator[None]:
    timm_logger = logging.getLogger("timm.models._builder")
    log_filter = _AdaptedStemLogFilter(adapted)
    timm_logger.addFilter(log_filter)
    try:
        yield
    finally:
        timm_logger.removeFilter(log_filter)


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


def _hub_file_downloaded(hub_id: str, filename: str) -> bool:
    """Download ``filename`` of ``hub_id`` into the HF cache; False when offline, absent or unreachable."""
    if hf_constants.HF_HUB_OFFLINE:
        return False
    repo_id, revision = hf_split(hub_id)
    try:
        hf_hub_download(repo_id, filename, revision=revision)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError,
            EntryNotFoundError, HfHubHTTPError, OSError) as e:
        _logger.info("%s/%s not available from the Hub (%s): deriving the weights", hub_id, filename, type(e).__name__)
        return False
    return True


def local_weights_file(pretrained_cfg: dict[str, Any], derive: Callable[[str], Derive | None] | None = None) -> str | None:
    """The local file ``pretrained=True`` loads for this cfg: a shipped copy or derived weights.

    None means timm's own resolution applies (an explicit ``hf-hub:`` name, a given file or state dict,
    or the Hugging Face cache / Hub). ``derive(model_tag)`` returns the function that derives the weights
    of a tag that may be derived (checked after the Hub's own copy).

    Example:
        >>> from timm.models import get_pretrained_cfg
        >>> local_weights_file(get_pretrained_cfg('gd_fmnist.fmnist').to_dict()).endswith('model.safetensors')
        True
    """
    if pretrained_cfg.get("source") == "hf-hub" or pretrained_cfg.get("file") or pretrained_cfg.get("state_dict"):
        return None
    hub_id = pretrained_cfg.get("hf_hub_id") or ""
    filename = pretrained_cfg.get("hf_hub_filename") or "model.safetensors"
    model_tag = f"{pretrained_cfg.get('architecture')}.{pretrained_cfg.get('tag')}"
    org, _, repo_tag = hf_split(hub_id)[0].partition("/")
    # the cfg's own published folder or, for a tag sharing another's weights (gd_fmnist_sc.fmnist), that folder
    if org == PUBLISHED_ORG and repo_tag in load_manifest():
        shipped = shipped_weights_file(repo_tag)
        if shipped is not None:
            return str(shipped)
    derive_fn = derive(model_tag) if derive is not None and hub_id else None
    if derive_fn is None or _cached_hub_file(hub_id, filename) is not None:
        return None
    cached = cached_derived_file(model_tag)
    if cached is not None:
        return str(cached)
    if _hub_file_downloaded(hub_id, filename):
        return None
    return str(derive_weights_file(model_tag, derive_fn))


def available_weights_file(name: str) -> str | None:
    """Where ``name``'s (``'<model>[.<tag>]'``) pretrained weights are on this machine, without deriving or downloading.

    A shipped copy, cached derived weights, or the Hugging Face cache; None when none of them holds them
    (or the model has no pretrained weights).

    Example:
        >>> available_weights_file('gd_fmnist').endswith('gd_fmnist.fmnist/model.safetensors')
        True
    """
    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.has_weights:
        return None
    local = local_weights_file(cfg.to_dict(), derive=None)
    derived = cached_derived_file(f"{cfg.architecture}.{cfg.tag}") if local is None else None
    if local is not None or derived is not None:
        return local or str(derived)
    return _cached_hub_file(cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors") if cfg.hf_hub_id else None


def build_gd_model(
    model_cls: Callable[..., nn.Module],
    variant: str,
    pretrained: bool = False,
    pretrained_filter_fn: Callable | None = None,
    derive: Callable[[str], Derive | None] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """timm's ``build_model_with_cfg`` with gdzoo's weight resolution, pretrained filter and actionable errors.

    ``derive(model_tag)``: the function deriving that tag's weights when neither shipped nor on the Hub
    (None for tags that cannot be derived).
    """
    adapted: list[str] = []

    def filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        if pretrained_filter_fn is not None:
            state_dict = pretrained_filter_fn(state_dict, model)
        return gd_pretrained_filter(state_dict, model, adapted)

    if not pretrained:
        return build_model_with_cfg(model_cls, variant, pretrained=False, pretrained_filter_fn=filter_fn, **kwargs)
    resolved = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get("pretrained_cfg"), pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay")
    ).to_dict()
    local = local_weights_file(resolved, derive)
    if local is not None:
        kwargs["pretrained_cfg_overlay"] = {**(kwargs.get("pretrained_cfg_overlay") or {}), "file": local}
    with _actionable_hub_errors(resolved), _quiet_adapted_stems(adapted):
        return build_model_with_cfg(model_cls, variant, pretrained=True, pretrained_filter_fn=filter_fn, **kwargs)
