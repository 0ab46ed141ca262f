"""Where gdzoo finds the real data prepared beside a checkout (``../shared``): MoNuSeg for ``gdzoo demo``.

The recipes name it as ``../shared/data/nuclei/monuseg2018`` (relative to where they run); ``$GDZOO_SHARED_DIR``
points at that ``shared`` folder from anywhere, as it does for the tests (``tests/_paths.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MONUSEG_SUBDIR", "SHARED_ENV", "find_monuseg", "monuseg_candidates"]

SHARED_ENV = "GDZOO_SHARED_DIR"
MONUSEG_SUBDIR = Path("data") / "nuclei" / "monuseg2018"


def monuseg_candidates() -> list[Path]:
    """Folders that may hold MoNuSeg, in the order they are tried: ``$GDZOO_SHARED_DIR`` alone when it is set,
    else ``../shared`` of the working directory (where the recipes look) and of the checkout gdzoo runs from.

    Example:
        >>> all(p.parts[-3:] == ("data", "nuclei", "monuseg2018") for p in monuseg_candidates())
        True
    """
    if os.environ.get(SHARED_ENV):
        return [(Path(os.environ[SHARED_ENV]).expanduser() / MONUSEG_SUBDIR).resolve()]
    shared = [Path.cwd().parent / "shared"]
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        shared.append(checkout.parent / "shared")
    found: list[Path] = []
    for folder in shared:
        path = (folder / MONUSEG_SUBDIR).resolve()
        if path not in found:
            found.append(path)
    return found


def find_monuseg() -> Path | None:
    """The first of :func:`monuseg_candidates` that holds ``images/`` and ``masks/``, or None."""
    return next((p for p in monuseg_candidates() if (p / "images").is_dir() and (p / "masks").is_dir()), None)
