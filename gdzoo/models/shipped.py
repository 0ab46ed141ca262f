"""Weights that ship with the code: ``weights/<model>.<tag>/`` travels in the wheel, sdist and checkout.

``published_weights.json`` (beside this file) is the manifest: for every published ``<model>.<tag>``, the
sha256 and size of its weights file (``WEIGHTS_FILE``). A shipped copy is looked up in the installed package
(``gdzoo/_weights/``, filled by the build hook in ``setup.py``) or, in a checkout, an editable install or
a torch.hub GitHub archive, in ``weights/`` beside the package. A copy whose hash differs from the
manifest is named in the error, never loaded.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .._io import sha256_file_once
from ..errors import UserError
from .weights_files import WEIGHTS_FILE

__all__ = [
    "MANIFEST_FILE",
    "PUBLISHED_ORG",
    "ShippedWeightsError",
    "load_manifest",
    "manifest_entry",
    "shipped_roots",
    "shipped_weights_file",
]

MANIFEST_FILE = Path(__file__).with_name("published_weights.json")
# The Hub organisation the shipped folders were published under: a cfg naming another org means the Hub.
PUBLISHED_ORG = "gdzoo"


class ShippedWeightsError(UserError, RuntimeError):
    """A shipped weights file that differs from the manifest (damaged, truncated or re-exported).

    A :class:`~gdzoo.errors.UserError` (the CLI prints it as one line) and, as before, a ``RuntimeError``.
    """


@lru_cache(maxsize=1)
def load_manifest() -> dict[str, dict[str, object]]:
    """``{'<model>.<tag>': {'sha256': hex, 'bytes': n}}`` for every published weights folder.

    Example:
        >>> {'gd_fmnist.fmnist', 'gd_fmnist.fmnist_table1'} <= set(load_manifest())
        True
    """
    return json.loads(MANIFEST_FILE.read_text(encoding="utf-8"))


def manifest_entry(path: str | Path) -> dict[str, object]:
    """The manifest record of a weights file: its sha256 and size in bytes (hashed once per process while unchanged)."""
    path = Path(path)
    return {"sha256": sha256_file_once(path), "bytes": path.stat().st_size}


def shipped_roots() -> list[Path]:
    """Folders that may hold shipped ``<model>.<tag>/`` copies, in the order they are searched.

    The installed package's ``_weights/`` first; then ``weights/`` beside the package, but only in a
    source tree (a checkout, editable install or torch.hub archive, recognised by its ``pyproject.toml``),
    so that an unrelated ``site-packages/weights`` is never read.
    """
    package = Path(__file__).resolve().parents[1]
    roots = [package / "_weights"]
    if (package.parent / "pyproject.toml").is_file():
        roots.append(package.parent / "weights")
    return roots


def shipped_weights_file(model_tag: str) -> Path | None:
    """The shipped weights file of a published ``'<model>.<tag>'``, checked against the manifest.

    Returns None when the tag is not published or no copy ships with this installation (then the
    Hugging Face cache / Hub serve it). Raises :class:`ShippedWeightsError` naming the file when its
    size or sha256 differs from the manifest.
    """
    expected = load_manifest().get(model_tag)
    if expected is None:
        return None
    for root in shipped_roots():
        path = root / model_tag / WEIGHTS_FILE
        if not path.is_file():
            continue
        actual = manifest_entry(path)
        if actual != expected:
            raise ShippedWeightsError(
                f"Shipped weights {path} are damaged: {actual['bytes']} bytes, sha256 {actual['sha256']}, but "
                f"the manifest {MANIFEST_FILE} expects {expected['bytes']} bytes, sha256 {expected['sha256']}. "
                "Reinstall gdzoo (or `git checkout -- weights/`); after re-exporting a published folder on "
                "purpose, run `gdzoo hub manifest`."
            )
        return path
    return None
