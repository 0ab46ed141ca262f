"""Where the tests find the repository and the real data prepared beside it (``../shared`` of a clone)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # a clone sits beside shared/ (CI and every workspace)
MONUSEG = SHARED / "data" / "nuclei" / "monuseg2018"
IMAGENET_STEM = SHARED / "data" / "imagenet_stem"
