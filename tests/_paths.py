"""Where the tests find the repository and the real data prepared beside it (``../shared`` of a clone)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# CI clones the repository next to ``shared/``; this workspace keeps it at /work/shared.
SHARED = next((p for p in (REPO.parent / "shared", Path("/work/shared")) if p.is_dir()), REPO.parent / "shared")
MONUSEG = SHARED / "data" / "nuclei" / "monuseg2018"
IMAGENET_STEM = SHARED / "data" / "imagenet_stem"
