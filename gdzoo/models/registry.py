"""Which timm models gdzoo registered (by the module their entry point lives in)."""

from __future__ import annotations

import timm


def list_gdzoo_models(pattern: str = "") -> list[str]:
    """Names of the timm models whose entry point is defined in gdzoo, optionally filtered like timm."""
    names = timm.list_models(pattern) if pattern else timm.list_models()
    return [n for n in names if timm.models.model_entrypoint(n).__module__.startswith("gdzoo.")]
