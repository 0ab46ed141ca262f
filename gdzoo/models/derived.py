"""Weights derived on first use (e.g. ``gd_vgg16.tv_in1k`` from timm's ``vgg16.tv_in1k``), cached once.

A derived file is written atomically to ``<gdzoo cache>/derived/<model>.<tag>/`` (``WEIGHTS_FILE``) with a
record (``derived.json``: sha256, size, what it came from, the fit's errors) written after it. The next
call checks the file against the record and loads it; a damaged file is reported and derived again.
The cache is ``$GDZOO_CACHE``, else ``$XDG_CACHE_HOME/gdzoo``, else ``~/.cache/gdzoo``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from timm.models import split_model_name_tag

from .._io import atomic_write, atomic_write_text
from .shipped import manifest_entry
from .weights_files import WEIGHTS_FILE

__all__ = ["CACHE_ENV", "RECORD_FILE", "cached_derived_file", "derive_weights_file", "gdzoo_cache_dir"]

_logger = logging.getLogger(__name__)

CACHE_ENV = "GDZOO_CACHE"
RECORD_FILE = "derived.json"

# A derive function returns the state dict and a JSON-able record of how it was made.
Derive = Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]]


def gdzoo_cache_dir() -> Path:
    """gdzoo's own cache folder (derived weights): ``$GDZOO_CACHE`` or ``$XDG_CACHE_HOME/gdzoo``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "gdzoo"


def _folder(model_tag: str) -> Path:
    return gdzoo_cache_dir() / "derived" / model_tag


def cached_derived_file(model_tag: str) -> Path | None:
    """The cached derived weights of ``model_tag`` if present and intact, else None (a damaged one is logged)."""
    folder = _folder(model_tag)
    path, record_path = folder / WEIGHTS_FILE, folder / RECORD_FILE
    if not (path.is_file() and record_path.is_file()):
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        expected = {"sha256": record["sha256"], "bytes": record["bytes"]}
    except (ValueError, KeyError) as e:
        _logger.warning("%s: unreadable record %s (%s); deriving the weights again", model_tag, record_path, e)
        return None
    actual = manifest_entry(path)
    if actual != expected:
        _logger.warning(
            "%s: cached derived weights %s are damaged (%d bytes, sha256 %s; recorded %d bytes, sha256 %s); "
            "deriving them again", model_tag, path, actual["bytes"], actual["sha256"], expected["bytes"],
            expected["sha256"],
        )
        return None
    return path


def derive_weights_file(model_tag: str, derive: Derive) -> Path:
    """Run ``derive`` and cache its weights for ``model_tag`` (file first, record last, both atomic)."""
    state_dict, record = derive()
    folder = _folder(model_tag)
    path = folder / WEIGHTS_FILE
    model, tag = split_model_name_tag(model_tag)
    metadata = {"format": "pt", "model": model, "tag": tag, "derived_from": str(record.get("source", ""))}
    state = {k: v.detach().contiguous() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    atomic_write_text(folder / RECORD_FILE, json.dumps({**manifest_entry(path), **record}, indent=2) + "\n")
    return path
