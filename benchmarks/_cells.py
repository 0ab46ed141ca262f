"""Stored result cells, shared by the benchmark scripts: each is written as it finishes (an interrupted run resumes)
and reused only while the weights and settings it was computed with are the current ones (a republished file makes
its numbers stale instead of shown as the new file's)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn as nn

from gdzoo._io import atomic_write_text


def tensors_sha256(model: nn.Module) -> str:
    """sha256 of a model's state (names and tensor bytes, in name order): identifies the weights a number was
    computed with, whatever file held them (two files with equal tensors but other metadata get the same digest).

    Example:
        >>> a, b = nn.Linear(2, 1), nn.Linear(2, 1)
        >>> (tensors_sha256(a) == tensors_sha256(a), tensors_sha256(a) == tensors_sha256(b))
        (True, False)
    """
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fill_cells(path: Path, done: dict, cells: Iterable[tuple[str, dict, Callable[[], dict]]],
               needed: tuple[str, ...] = (), summary: Callable[[dict], str] | None = None) -> dict:
    """Compute each ``(key, identity, compute)`` of ``cells`` whose stored cell ``done[key]`` is missing, lacks a
    ``needed`` field, or differs from ``identity`` (the weights' :func:`tensors_sha256` as ``weights_sha256``, and
    whatever else its numbers depend on); store it with its identity in ``path`` as it finishes.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "cells.json"
        >>> done = {"a": {"top1": 50.0, "weights_sha256": "old"}, "b": {"top1": 70.0, "weights_sha256": "new"}}
        >>> cells = [(k, {"weights_sha256": "new"}, lambda: {"top1": 90.0}) for k in ("a", "b")]
        >>> fill_cells(path, done, cells, summary=lambda cell: "computed")["a"]
        a: computed
        {'top1': 90.0, 'weights_sha256': 'new'}
        >>> json.loads(path.read_text())["b"]["top1"]  # b was scored with the current weights: kept
        70.0
    """
    show = summary or (lambda cell: json.dumps(cell, ensure_ascii=False))
    for key, identity, compute in cells:
        stored = done.get(key, {})
        if all(stored.get(k) == v for k, v in identity.items()) and all(field in stored for field in needed):
            continue
        done[key] = {**compute(), **identity}
        atomic_write_text(path, json.dumps(done, indent=1, ensure_ascii=False) + "\n")
        print(f"{key}: {show(done[key])}", flush=True)
    return done
