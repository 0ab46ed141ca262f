"""The manifest of the weights that ship with gdzoo (``gdzoo/models/published_weights.json``), from Hub folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .._io import atomic_write_text
from ..models.shipped import MANIFEST_FILE, load_manifest, manifest_entry
from .layout import WEIGHTS_FILE, HubFolder

__all__ = ["manifest_differences", "manifest_of", "write_manifest"]


def manifest_of(folders: list[HubFolder]) -> dict[str, dict[str, object]]:
    """``{'<model>.<tag>': {'sha256', 'bytes'}}`` of each folder's weights file (``WEIGHTS_FILE``)."""
    ordered = sorted(folders, key=lambda f: f.path.name)
    return {folder.path.name: manifest_entry(folder.path / WEIGHTS_FILE) for folder in ordered}


def manifest_differences(folders: list[HubFolder], path: str | os.PathLike = MANIFEST_FILE) -> list[str]:
    """How the manifest at ``path`` differs from ``folders`` (empty when they agree)."""
    want = manifest_of(folders)
    have = json.loads(Path(path).read_text(encoding="utf-8"))
    problems = [f"{name}: in the weights folders, not in the manifest" for name in sorted(set(want) - set(have))]
    problems += [f"{name}: in the manifest, no weights folder" for name in sorted(set(have) - set(want))]
    problems += [f"{name}: manifest {have[name]} != folder {want[name]}" for name in sorted(set(want) & set(have))
                 if have[name] != want[name]]
    return problems


def write_manifest(folders: list[HubFolder], path: str | os.PathLike = MANIFEST_FILE) -> Path:
    """Write the manifest of ``folders`` (atomically) to ``path``: these are the weights that ship."""
    written = atomic_write_text(path, json.dumps(manifest_of(folders), indent=2, sort_keys=True) + "\n")
    load_manifest.cache_clear()
    return written
