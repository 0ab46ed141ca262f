"""The weight-choosing flags that ``gdzoo eval`` and ``gdzoo predict`` share (no torch import: help stays fast)."""

from __future__ import annotations

import argparse

__all__ = ["add_weights_arguments"]


def add_weights_arguments(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--checkpoint``, ``--pretrained`` and ``--random-init`` (published weights are the default)."""
    p.add_argument("--model", help="timm model name (default: the run's model)")
    p.add_argument("--checkpoint", help="run folder, best.safetensors / last.pth, or a weights/<model>.<tag>/ folder")
    p.add_argument("--pretrained", action="store_true",
                   help="the model's pretrained weights (the default, with neither --checkpoint nor --random-init, "
                        "for a model with published weights)")
    p.add_argument("--random-init", action="store_true",
                   help="untrained (random) weights, on purpose; without it, a model with neither --checkpoint nor "
                        "published weights is refused")
