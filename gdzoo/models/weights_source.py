"""Where the pretrained weights of ``<model>.<tag>`` come from: the one place that decides, checks and says so.

:func:`resolve` (a model name) and :func:`resolve_cfg` (a resolved timm pretrained cfg) return a
:class:`WeightsSource`: the kind, the local path and the sha256 it was checked against, *before* any tensor is
read. ``timm.create_model(pretrained=True)`` asks once per load (:func:`~gdzoo.models.pretrained.build_gd_model`
hands the checked path to timm as ``pretrained_cfg_overlay=dict(file=...)``). In order:

1. ``'file'``: the caller's own file (``pretrained_cfg_overlay=dict(file=...)``, a ``local-dir:`` folder), loaded
   as given (nothing to check it against); an explicit ``hf-hub:`` name is a ``'hub'`` source;
2. ``'shipped'``: a published tag whose copy ships with the code (:mod:`gdzoo.models.shipped`), checked against
   the manifest, no network;
3. for a tag that may be derived (``gd_vgg16.tv_in1k``): the Hub's copy if the Hugging Face cache holds it, else
   ``'derived'`` weights cached earlier (checked against their record), else the Hub's copy if it can be
   downloaded, else weights derived now and cached (:mod:`gdzoo.models.derived`);
4. ``'hub'``: the Hugging Face cache / Hub (``<org>/<model>.<tag>``, org ``$GDZOO_HF_ORG``), fetched with
   ``hf_hub_download`` as timm would and checked against its blob name (the Hub's sha256).

With ``download=False`` (what is on this machine already) nothing is derived or fetched, and a Hub file found in
the cache is returned unchecked (``sha256=None``); it is checked when it is loaded.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
from timm.models import get_pretrained_cfg, split_model_name_tag
from timm.models._hub import hf_split

from .._io import sha256_file_once
from . import shipped
from .derived import RECORD_FILE, Derive, cached_derived_file, derive_weights_file
from .weights_files import WEIGHTS_FILE

__all__ = [
    "ORG_ENV",
    "PUBLISHED_WEIGHTS",
    "WEIGHTS_FILE",
    "WeightsKind",
    "WeightsSource",
    "actionable_hub_errors",
    "cached_hub_file",
    "check_cached_hub_file",
    "default_org",
    "hub_repo_id",
    "model_and_tag",
    "resolve",
    "resolve_cfg",
    "shipped_source",
]

_logger = logging.getLogger(__name__)

ORG_ENV = "GDZOO_HF_ORG"

# '<model>.<tag>' of every published weights/<model>.<tag>/ folder: the manifest's keys (tests keep them equal).
PUBLISHED_WEIGHTS: frozenset[str] = frozenset(shipped.load_manifest())

WeightsKind = Literal["shipped", "derived", "hub", "file"]
# derive(model_tag): the function deriving that tag's weights, or None for tags that cannot be derived.
DeriveLookup = Callable[[str], "Derive | None"]


@dataclass(frozen=True)
class WeightsSource:
    """Where one load's weights come from.

    ``sha256`` is the hash the file was checked against before loading (manifest, derived record or Hub blob
    name); None when there is nothing to check against (the caller's own file, a Hub file that is not stored by
    its sha256) or, with ``download=False``, a Hub file not checked yet.

    Example:
        >>> source = resolve('gd_fmnist')
        >>> source.kind, source.name, source.path.name == WEIGHTS_FILE, len(source.sha256)
        ('shipped', 'gd_fmnist.fmnist', True, 64)
    """

    name: str
    kind: WeightsKind
    path: Path
    sha256: str | None


def default_org() -> str:
    """The Hub organisation of gdzoo's weights: ``$GDZOO_HF_ORG`` or ``'gdzoo'``."""
    return os.environ.get(ORG_ENV) or "gdzoo"


def hub_repo_id(model_name: str, tag: str) -> str:
    """``<org>/<model>.<tag>``: the Hub repo holding one model's weights for one tag."""
    return f"{default_org()}/{model_name}.{tag}"


def model_and_tag(model_tag: str) -> tuple[str, str]:
    """``'<model>.<tag>'`` split by timm's ``split_model_name_tag``; raises ValueError unless both parts are there.

    Example:
        >>> model_and_tag('gd_vgg16.tv_in1k')
        ('gd_vgg16', 'tv_in1k')
    """
    model, tag = split_model_name_tag(model_tag)
    if not (model and tag):
        raise ValueError(f"expected '<model>.<tag>', got {model_tag!r}")
    return model, tag


def _name(pretrained_cfg: dict[str, Any]) -> str:
    return f"{pretrained_cfg.get('architecture')}.{pretrained_cfg.get('tag')}"


def cached_hub_file(hub_id: str, filename: str) -> str | None:
    """The HF cache's copy of ``filename`` of ``hub_id``, or None."""
    repo_id, revision = hf_split(hub_id)
    hit = try_to_load_from_cache(repo_id, filename, revision=revision)
    return hit if isinstance(hit, str) else None


def check_cached_hub_file(hub_id: str, filename: str, path: str | os.PathLike) -> str | None:
    """The sha256 of a Hugging Face cache file, checked against its blob name (the Hub's ETag) before it is loaded.

    Returns None for a blob not named by its sha256 (a small file stored in git). Raises RuntimeError naming the
    file when the hash differs (a flipped byte or a truncated download).
    """
    blob = Path(path).resolve()
    if len(blob.name) != 64:
        return None
    if sha256_file_once(blob) != blob.name:
        raise RuntimeError(
            f"Cached weights {filename} of {hf_split(hub_id)[0]} are corrupted: sha256 of {blob} differs from the "
            f"Hub's hash {blob.name}. Delete that file and download again, or re-run `gdzoo hub seed`."
        )
    return blob.name


@contextmanager
def actionable_hub_errors(pretrained_cfg: dict[str, Any]) -> Iterator[None]:
    """Turn huggingface_hub's and safetensors' errors for this cfg's Hub weights into messages a user can act on."""
    hub_id = pretrained_cfg.get("hf_hub_id", "?")
    filename = pretrained_cfg.get("hf_hub_filename", WEIGHTS_FILE)
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


def _hub_source(pretrained_cfg: dict[str, Any], hub_id: str, filename: str) -> WeightsSource:
    """Fetch ``filename`` of ``hub_id`` as timm would (cache, else Hub), then check it; errors say what to do."""
    repo_id, revision = hf_split(hub_id)
    with actionable_hub_errors(pretrained_cfg):
        path = hf_hub_download(repo_id, filename, revision=revision)
    return WeightsSource(_name(pretrained_cfg), "hub", Path(path), check_cached_hub_file(hub_id, filename, path))


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


def shipped_source(pretrained_cfg: dict[str, Any]) -> WeightsSource | None:
    """The shipped copy of the published tag whose gdzoo Hub repo the cfg names (another org means the Hub): the
    cfg's own tag or, for a tag sharing another's weights (``gd_fmnist_sc.fmnist``: ``gd_fmnist.fmnist_table1``),
    that one."""
    org, _, repo_tag = hf_split(pretrained_cfg.get("hf_hub_id") or "")[0].partition("/")
    if org != shipped.PUBLISHED_ORG or repo_tag not in shipped.load_manifest():
        return None
    path = shipped.shipped_weights_file(repo_tag)
    sha256 = shipped.load_manifest()[repo_tag]["sha256"]
    return None if path is None else WeightsSource(_name(pretrained_cfg), "shipped", path, sha256)


def _derived(name: str, path: Path) -> WeightsSource:
    """Derived weights, with the sha256 their record holds (the file was just checked against it, or written)."""
    record = json.loads((path.parent / RECORD_FILE).read_text(encoding="utf-8"))
    return WeightsSource(name, "derived", path, record["sha256"])


def _derived_source(name: str) -> WeightsSource | None:
    path = cached_derived_file(name)
    return None if path is None else _derived(name, path)


def _hub_or_cached(pretrained_cfg: dict[str, Any], download: bool) -> WeightsSource | None:
    """The cfg's Hub file: fetched and checked (``download``), else the cache's copy unchecked; None when the cfg
    names no Hub safetensors file (timm then loads what it names its own way)."""
    hub_id = pretrained_cfg.get("hf_hub_id") or ""
    filename = pretrained_cfg.get("hf_hub_filename") or ("" if download else WEIGHTS_FILE)
    if not hub_id or not filename.endswith(".safetensors"):
        return None
    if download:
        return _hub_source(pretrained_cfg, hub_id, filename)
    cached = cached_hub_file(hub_id, filename)
    return None if cached is None else WeightsSource(_name(pretrained_cfg), "hub", Path(cached), None)


def resolve_cfg(
    pretrained_cfg: dict[str, Any], derive: DeriveLookup | None = None, download: bool = True
) -> WeightsSource | None:
    """Where the weights of this (resolved) timm pretrained cfg come from, checked; None when there is no file to
    check (a given state dict, no weights, a URL, a Hub file that is not safetensors): timm then loads as it does.

    ``derive(model_tag)`` returns the function that derives a tag's weights (None for tags that cannot be
    derived). ``download=False``: only what is on this machine (nothing derived or fetched; Hub files unchecked).
    The caller's own choices come first, in timm's order: an ``hf-hub:`` name, a ``local-dir:`` folder, a state
    dict, a file.
    """
    name, source = _name(pretrained_cfg), pretrained_cfg.get("source")
    if source == "hf-hub":
        return _hub_or_cached(pretrained_cfg, download)
    if source == "local-dir" or pretrained_cfg.get("state_dict") or pretrained_cfg.get("file"):
        file = None if source != "local-dir" and pretrained_cfg.get("state_dict") else pretrained_cfg.get("file")
        return WeightsSource(name, "file", Path(file), None) if file else None
    shipped_copy = shipped_source(pretrained_cfg)
    if shipped_copy is not None:
        return shipped_copy
    hub_id, filename = pretrained_cfg.get("hf_hub_id") or "", pretrained_cfg.get("hf_hub_filename") or WEIGHTS_FILE
    if not download:  # what is on this machine: the Hugging Face cache, else derived weights cached earlier
        return _hub_or_cached(pretrained_cfg, download=False) or _derived_source(name)  # the order of a real load
    derive_fn = derive(name) if derive is not None and hub_id else None
    if derive_fn is not None and cached_hub_file(hub_id, filename) is None:
        derived = _derived_source(name)
        if derived is not None:
            return derived
        if not _hub_file_downloaded(hub_id, filename):
            return _derived(name, derive_weights_file(name, derive_fn))
    return _hub_or_cached(pretrained_cfg, download=True)


def resolve(name: str, derive: DeriveLookup | None = None, download: bool = True) -> WeightsSource | None:
    """Where ``name``'s (``'<model>[.<tag>]'``, timm's default tag when none) pretrained weights come from, checked.

    None when the model has no pretrained weights, or (``download=False``) none are on this machine yet.

    Example:
        >>> resolve('gd_fmnist.fmnist').kind, resolve('gd_vgg16_bn', download=False)
        ('shipped', None)
    """
    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.has_weights:
        return None
    return resolve_cfg(cfg.to_dict(), derive, download)
