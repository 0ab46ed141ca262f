"""Freeze policies leave exactly the right parameters trainable (and frozen norms stop updating)."""

from __future__ import annotations

import pytest
import timm
import torch

import gdzoo.models  # noqa: F401
from gdzoo.training.config import OptimConfig
from gdzoo.training.freeze import apply_freeze, set_train_mode
from gdzoo.training.optim import create_optimizer


@pytest.fixture()
def model() -> torch.nn.Module:
    return timm.create_model("gd_fmnist", num_classes=10)


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_head_only(model: torch.nn.Module) -> None:
    names = apply_freeze(model, "head_only")
    head = model.pretrained_cfg["classifier"]
    assert _trainable(model) == set(names) == {n for n, _ in model.named_parameters() if n.startswith(head + ".")}
    assert names  # the classifier has parameters
    optimizer = create_optimizer(model, OptimConfig(opt="adam"))
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}


def test_all_but_stem_trains_only_the_first_conv(model: torch.nn.Module) -> None:
    stem = model.pretrained_cfg["first_conv"]
    names = apply_freeze(model, "all_but_stem")
    assert names and all(n.startswith(stem + ".") for n in names)
    assert _trainable(model) == {n for n, _ in model.named_parameters() if n.startswith(stem + ".")}
    # a real step moves the stem only
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = create_optimizer(model, OptimConfig(opt="sgd", lr=0.1))
    set_train_mode(model)
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(names)


def test_regex_freezes_matching(model: torch.nn.Module) -> None:
    apply_freeze(model, "regex", [r"^stem\.", r"\.norm\."])
    trainable = _trainable(model)
    assert not any(n.startswith("stem.") or ".norm." in n for n in trainable)
    assert any(n.startswith("head.") for n in trainable)


def test_none_and_errors(model: torch.nn.Module) -> None:
    assert _trainable(model) == set(apply_freeze(model, "none")) == {n for n, _ in model.named_parameters()}
    with pytest.raises(ValueError, match="left no trainable"):
        apply_freeze(model, "regex", [".*"])
    with pytest.raises(ValueError, match="must be one of"):
        apply_freeze(model, "stem_only")


def test_frozen_batchnorm_stays_in_eval_mode() -> None:
    model = timm.create_model("resnet10t", num_classes=3, in_chans=1)
    apply_freeze(model, "head_only")
    set_train_mode(model, True)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms) and model.fc.training
    running = norms[0].running_mean.clone()
    model(torch.randn(2, 1, 32, 32))
    assert torch.equal(norms[0].running_mean, running)


def test_stem_and_head(model: torch.nn.Module) -> None:
    names = apply_freeze(model, "stem_and_head")
    assert {n.split(".")[0] for n in names} == {"stem", "head"}
    assert all(n.startswith(("stem.conv.", "head.fc.")) for n in names)


def test_rfnn_geometry_stays_fixed_through_training_steps() -> None:
    """RFNN's Gaussian geometry is fixed (the baseline's definition): freeze='none' and optimizer steps leave it exact.

    The trainer's ``apply_freeze('none')`` used to switch every parameter on, so the "fixed" σ, μ, θ
    (then frozen parameters) were learned.
    """
    model = timm.create_model("rfnn_fmnist", num_classes=10)
    geometry = {n: b.detach().clone() for n, b in model.named_buffers()
                if n.endswith(("sigma_raw", "mu_raw", "theta_raw"))}
    assert len(geometry) == 12  # four GD layers × (σ, μ, θ)
    weights = model.stem.conv.weight.detach().clone()
    apply_freeze(model, "none")
    optimizer = create_optimizer(model, OptimConfig(opt="adam", lr=0.1))
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 1, 28, 28)).logsumexp(1).sum().backward()
        optimizer.step()
    assert all(torch.equal(model.state_dict()[n], v) for n, v in geometry.items())
    assert not torch.equal(model.stem.conv.weight, weights)  # the combination weights did train


def test_policies_find_the_head_and_stem_of_a_wrapped_model() -> None:
    """gd_fmnist_sc's cfg names gd_fmnist's ``head.fc`` / ``stem.conv``; its parameters live under ``model.``."""
    wrapped = timm.create_model("gd_fmnist_sc")
    assert apply_freeze(wrapped, "head_only") == [n for n, _ in wrapped.named_parameters()
                                                  if n.startswith("model.head.fc.")] != []
    assert set(apply_freeze(wrapped, "all_but_stem")) == {n for n, _ in wrapped.named_parameters()
                                                          if n.startswith("model.stem.conv.")} != set()
    wrapped.pretrained_cfg = {**wrapped.pretrained_cfg, "classifier": "no_such_layer"}
    with pytest.raises(ValueError, match="'no_such_layer', which is not a module in ScaleChannelClassifier"):
        apply_freeze(wrapped, "head_only")
