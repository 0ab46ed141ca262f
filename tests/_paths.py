"""Where the tests find the repository and the real data prepared beside it (``../shared`` of a clone).

A clone elsewhere points ``GDZOO_SHARED_DIR`` at that folder (the one holding ``data/nuclei`` and
``data/imagenet_stem``); without it, the tests that need the data skip and their reason says how to run them.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_ENV = "GDZOO_SHARED_DIR"
# a clone sits beside shared/ (CI and every workspace); GDZOO_SHARED_DIR points anywhere else
SHARED = Path(os.environ[SHARED_ENV]).expanduser().resolve() if os.environ.get(SHARED_ENV) else REPO.parent / "shared"
MONUSEG = SHARED / "data" / "nuclei" / "monuseg2018"
IMAGENET_STEM = SHARED / "data" / "imagenet_stem"


def missing_data(what: str, path: Path) -> str:
    """Skip reason for shared data not found at ``path``: where it was looked for and how to point at it."""
    where = (f"${SHARED_ENV}={os.environ[SHARED_ENV]}" if os.environ.get(SHARED_ENV)
             else "../shared beside the repository")
    return (f"{what} not found at {path} (looked in {where}); set {SHARED_ENV} to the folder holding "
            f"data/nuclei and data/imagenet_stem to run this test")
