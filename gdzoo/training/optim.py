"""Optimizers (Adam, AdamW, SGD) and per-step learning-rate schedules in closed form (cosine with floor, step, warmup).

The cosine schedule is Keras' ``CosineDecay``:
``lr_k = lr_0 · ((1 − α) · ½ · (1 + cos(π · min(k, K) / K)) + α)``. The paper prints
``lr_0 (α + (1 − α)(1 + cos(2π · min(k, K) / K)))``, which would climb back to ``2 lr_0`` at ``K`` and
exceed ``lr_0`` at ``k = 0``; we read it as a typo of the Keras formula its code uses (docs/training.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.optim import param_groups_weight_decay
from torch.optim.lr_scheduler import LambdaLR

from ..layers import no_weight_decay_names
from .config import OptimConfig, SchedConfig

__all__ = ["LrSchedule", "create_optimizer", "create_scheduler", "cosine_decay", "build_schedule"]


def create_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer over the model's trainable parameters.

    With ``no_decay_bias_norm`` (the default), timm's grouping: no decay on biases, norms, the model's
    ``no_weight_decay()`` names and the σ, μ, θ of every GDConv2d (also in models gdzoo did not build).
    """
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters (check train.freeze / train.freeze_patterns)")
    if cfg.weight_decay and cfg.no_decay_bias_norm:
        skip = set(getattr(model, "no_weight_decay", set)()) | no_weight_decay_names(model)
        params = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=skip)
    else:
        params = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}]
    if cfg.opt == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if cfg.opt == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if cfg.opt == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    raise ValueError(f"optim.opt must be one of adam, adamw, sgd, got {cfg.opt!r}")


def cosine_decay(step: int, decay_steps: int, alpha: float) -> float:
    """Keras ``CosineDecay`` factor ``(1 − α)·½(1 + cos(π·min(k, K)/K)) + α``.

    Example:
        >>> cosine_decay(0, 100, 0.1), cosine_decay(50, 100, 0.1), cosine_decay(500, 100, 0.1)
        (1.0, 0.55, 0.1)
    """
    progress = min(step, decay_steps) / max(decay_steps, 1)
    return round((1.0 - alpha) * 0.5 * (1.0 + math.cos(math.pi * progress)) + alpha, 15)


@dataclass(frozen=True)
class LrSchedule:
    """The lr multiplier at each optimizer step ``k``: linear warmup, then cosine / step / constant."""

    name: str
    warmup_steps: int = 0
    warmup_start: float = 0.0
    decay_steps: int = 1
    alpha: float = 0.0
    gamma: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps
        k = step - self.warmup_steps
        if self.name == "cosine":
            return cosine_decay(k, self.decay_steps, self.alpha)
        if self.name == "step":
            return self.gamma ** (k // max(self.decay_steps, 1))
        return 1.0


def build_schedule(cfg: SchedConfig, steps_per_epoch: int, epochs: int) -> LrSchedule:
    """Turn the recipe's epoch lengths into step counts."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    total = steps_per_epoch * epochs
    if cfg.decay_epochs is not None:
        decay = max(1, int(round(cfg.decay_epochs * steps_per_epoch)))
    elif cfg.name == "step":
        decay = max(1, int(round(30 * steps_per_epoch)))
    else:
        decay = max(1, total - warmup)
    return LrSchedule(cfg.name, warmup, cfg.warmup_start, decay, cfg.alpha, cfg.gamma)


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedConfig, steps_per_epoch: int, epochs: int) -> LambdaLR:
    """A ``LambdaLR`` stepped once per optimizer step (its state_dict resumes exactly)."""
    return LambdaLR(optimizer, build_schedule(cfg, steps_per_epoch, epochs))
