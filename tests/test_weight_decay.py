"""Weight decay leaves the GD kernels' geometry (σ, μ, θ) alone, through timm's optimizer factory and gdzoo's trainer.

One AdamW step with zero gradients is pure decoupled decay: decayed tensors shrink by exactly
``1 − lr · wd``, excluded ones do not move.
"""

from __future__ import annotations

import pytest
import timm
import timm.optim
import torch
import torch.nn as nn

import gdzoo  # noqa: F401  (registers the models)
from gdzoo.layers import GDConv2d
from gdzoo.training.config import OptimConfig
from gdzoo.training.optim import create_optimizer

GEOMETRY_SUFFIXES = ("sigma_raw", "mu_raw", "theta_raw")
LR, WD = 0.1, 0.5


def geometry_names(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in GEOMETRY_SUFFIXES}


def zero_grad_step(model: nn.Module,
                   optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Parameters before and after one step with all-zero gradients."""
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    optimizer.step()
    return before, {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def assert_decayed_exactly_where_expected(model: nn.Module, optimizer: torch.optim.Optimizer,
                                          excluded: set[str]) -> None:
    before, after = zero_grad_step(model, optimizer)
    for name in before:
        if name in excluded or before[name].ndim <= 1:
            torch.testing.assert_close(after[name], before[name], rtol=0, atol=0, msg=f"{name} moved")
        else:
            torch.testing.assert_close(after[name], before[name] * (1 - LR * WD), msg=f"{name} not decayed")


@pytest.mark.parametrize("name", ["gd_fmnist", "gd_fmnist_sep", "gd_unet"])
def test_models_declare_their_geometry(name: str) -> None:
    model = timm.create_model(name)
    assert model.no_weight_decay() == geometry_names(model) and model.no_weight_decay()


@pytest.mark.parametrize("name", ["gd_fmnist", "gd_unet"])
def test_timm_optimizer_factory_skips_geometry(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name)
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=LR, weight_decay=WD)
    assert_decayed_exactly_where_expected(model, optimizer, geometry_names(model))


def test_trainer_optimizer_skips_geometry_in_any_model() -> None:
    """A plain container (no ``no_weight_decay`` method), e.g. a model gdify'd by hand."""
    torch.manual_seed(0)
    model = nn.Sequential(GDConv2d(3, 8, 5, padding=2), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3))
    optimizer = create_optimizer(model, OptimConfig(opt="adamw", lr=LR, weight_decay=WD))
    assert geometry_names(model) == {"0.sigma_raw", "0.mu_raw", "0.theta_raw"}
    assert_decayed_exactly_where_expected(model, optimizer, geometry_names(model))


def test_trainer_optimizer_decays_everything_when_asked() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(GDConv2d(3, 8, 5, padding=2))
    optimizer = create_optimizer(model, OptimConfig(opt="adamw", lr=LR, weight_decay=WD, no_decay_bias_norm=False))
    before, after = zero_grad_step(model, optimizer)
    for name in before:
        torch.testing.assert_close(after[name], before[name] * (1 - LR * WD), msg=name)
