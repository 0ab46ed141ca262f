"""Atomic training checkpoints and exact resume: model, optimizer, scheduler, scaler, EMA, RNG states, epoch and step.

Only plain containers and tensors are stored, so every checkpoint loads with ``weights_only=True``.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write
from ..errors import UserError

__all__ = ["CHECKPOINT_VERSION", "capture_rng", "check_resumable", "load_checkpoint", "restore_rng", "save_checkpoint",
           "model_state_from_file"]

CHECKPOINT_VERSION = 1


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch CPU and CUDA generator states as weights_only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
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
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# What torch.save's C++ writer says when a write fails (a full disk among the causes); it never names the file.
_TORCH_WRITE_FAILED = ("enforce fail at inline_container", "PytorchStreamWriter failed", "file write failed",
                       "unexpected pos")
_LOW_SPACE = 64 << 20  # bytes: below this, a failed write is put down to a full disk


def _write_failed(path: Path, error: BaseException) -> UserError | None:
    """The one-line error for a failed checkpoint write (disk full or another write error), or None when
    ``error`` is not a write failure."""
    text = str(error)
    full = isinstance(error, OSError) and error.errno == errno.ENOSPC or "No space left" in text
    if not full and not (isinstance(error, RuntimeError) and any(s in text for s in _TORCH_WRITE_FAILED)):
        return None
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    full = full or (free is not None and free < _LOW_SPACE)
    space = (f"{free / 2**20:,.1f} MiB free on {path.parent}" if free is not None
             else f"free space on {path.parent} unknown")
    kept = f"{path} still holds the last good checkpoint" if path.is_file() else "no earlier checkpoint was there"
    if full:
        return UserError(f"disk full: cannot write checkpoint {path} ({space}); {kept}. Free some space, then resume "
                         "with --resume")
    reason = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return UserError(f"cannot write checkpoint {path} ({reason[:200]}; {space}); {kept}")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` atomically (temp file + fsync + rename).

    A write that fails (a full disk above all) leaves the previous checkpoint as it was and raises
    :class:`~gdzoo.errors.UserError` naming the file and the free space.
    """
    path = Path(path)
    payload = {"version": CHECKPOINT_VERSION, **state}
    try:
        return atomic_write(path, lambda tmp: torch.save(payload, tmp))
    except (OSError, RuntimeError) as e:
        error = _write_failed(path, e)
        if error is None:
            raise
        raise error from e


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint written by :func:`save_checkpoint` (read with ``weights_only=True``).

    A file that is damaged, not a gdzoo checkpoint, or holds disallowed objects raises
    :class:`~gdzoo.errors.UserError` naming it.
    """
    from ..models.pretrained import safe_torch_load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (train.resume takes a last.pth path or 'auto')")
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "model" not in state:
        raise UserError(f"{path} is not a gdzoo training checkpoint (version {CHECKPOINT_VERSION}); "
                        "train.resume takes the last.pth of a gdzoo run folder")
    return state


def check_resumable(ckpt: dict[str, Any], path: str | os.PathLike, model: str, opt: str,
                    model_state: dict[str, torch.Tensor] | None = None) -> None:
    """Raise :class:`~gdzoo.errors.UserError` when the checkpoint at ``path`` was written for another model or
    optimizer than the recipe's ``model`` / ``opt`` (checked before anything is loaded).

    ``model_state``: the recipe's model's state dict, compared key by key and shape by shape with the
    checkpoint's (the same model name with another number of classes, channels or arguments).
    """
    saved = ckpt.get("recipe") or {}
    saved_model = (saved.get("model") or {}).get("name")
    saved_opt = (saved.get("optim") or {}).get("opt")
    fix = "resume with the recipe that wrote it, or start a new run (another output.name) without --resume"
    if saved_model and saved_model != model:
        raise UserError(f"cannot resume from {path}: it holds a {saved_model} model, the recipe builds {model}; {fix}")
    if model_state is not None:
        theirs = ckpt["model"]
        missing = sorted(set(model_state) - set(theirs))
        unexpected = sorted(set(theirs) - set(model_state))
        wrong = [k for k in model_state if k in theirs and tuple(theirs[k].shape) != tuple(model_state[k].shape)]
        if missing or unexpected or wrong:
            what = saved_model or "another model"
            detail = (f"{wrong[0]} is {tuple(theirs[wrong[0]].shape)} there, {tuple(model_state[wrong[0]].shape)} here"
                      if wrong else f"{len(missing)} missing, {len(unexpected)} unexpected tensors "
                                    f"(e.g. {(missing or unexpected)[0]})")
            raise UserError(f"cannot resume from {path}: it holds {what} weights that do not fit the recipe's {model} "
                            f"({detail}); {fix}")
    if saved_opt and saved_opt != opt:
        raise UserError(f"cannot resume from {path}: it was trained with optimizer {saved_opt}, the recipe uses {opt}; "
                        f"set optim.opt={saved_opt} to resume, or start a new run without --resume")


def model_state_from_file(path: str | os.PathLike, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Model weights from a ``.safetensors`` file, a training checkpoint (``model`` / ``ema``) or a plain state dict."""
    from ..models.pretrained import load_weights_file
    from ..models.weights_files import WEIGHTS_FILE

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    state = load_weights_file(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["ema"] if use_ema and state.get("ema") else state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}
