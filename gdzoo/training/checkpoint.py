"""Atomic training checkpoints and exact resume: model, optimizer, scheduler, scaler, EMA, RNG states, epoch and step.

Only plain containers and tensors are stored, so every checkpoint loads with ``weights_only=True``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write

__all__ = ["CHECKPOINT_VERSION", "capture_rng", "load_checkpoint", "restore_rng", "save_checkpoint", "model_state_from_file"]

CHECKPOINT_VERSION = 1


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch CPU and CUDA generator states as weights_only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"], np_state["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` atomically (temp file + fsync + rename)."""
    payload = {"version": CHECKPOINT_VERSION, **state}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint written by :func:`save_checkpoint` (read with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (train.resume takes a last.pth path or 'auto')")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "model" not in state:
        raise ValueError(f"{path} is not a gdzoo training checkpoint (version {CHECKPOINT_VERSION})")
    return state


def model_state_from_file(path: str | os.PathLike, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Model weights from a ``.safetensors`` file, a training checkpoint (``model`` / ``ema``) or a plain state dict."""
    from ..models.pretrained import load_weights_file

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    state = load_weights_file(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["ema"] if use_ema and state.get("ema") else state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}
