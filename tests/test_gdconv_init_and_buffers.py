"""``GDConv2d``'s ``init='fixed'`` on 1×k and 1×1 grids (exactly-zero odd-order kernels) draws ordinary-scale
weights; geometry left out of ``trainable`` is a persistent buffer under the same name (timm: every parameter
trains), and ``rfnn_fmnist``'s published weights load strictly."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn as nn

from gdzoo import GDConv2d
from gdzoo.layers import no_weight_decay_names

from _gdconv_cases import F64, inputs

pytestmark = pytest.mark.usefixtures("single_thread")


# ============================================================================================ fixed init
@pytest.mark.parametrize("separated", [False, True])
@pytest.mark.parametrize("kernel_size", [(1, 7), (7, 1), 1, (1, 3)])
def test_fixed_init_on_degenerate_grids(kernel_size: Any, separated: bool) -> None:
    """Zero-norm odd-order kernels get ordinary-scale weights: |w| like the k×k case, E[out²] ≈ 2, and a
    small move of θ/μ keeps the output O(1)."""
    def build(ks: Any) -> GDConv2d:
        torch.manual_seed(0)
        return GDConv2d(32, 32, ks, num_bases=2, order=3, init="fixed", padding="valid", separated=separated)

    m, square = build(kernel_size), build(7)
    weights = [m.weight_out, m.weight_in] if separated else [m.weight]
    reference = [square.weight_out, square.weight_in] if separated else [square.weight]
    for w, ref in zip(weights, reference):
        assert torch.isfinite(w).all()
        assert w.abs().max() < 10 * ref.abs().max(), (w.abs().max().item(), ref.abs().max().item())
    assert (m.basis().pow(2).sum((-2, -1)) < 1e-20).any()  # the grid really is degenerate
    x = inputs(4, 32, 20, 20)
    with torch.no_grad():
        at_init = [m(x).square().mean().item()]
        for _ in range(5):
            m.reset_parameters()
            at_init.append(m(x).square().mean().item())
        assert abs(sum(at_init) / len(at_init) - 2.0) < 0.6, at_init
        m.theta_raw.add_(0.05)
        m.mu_raw.add_(0.05)
        assert m(x).square().mean().item() < 10.0


def test_fixed_init_unchanged_for_regular_grids() -> None:
    """Non-degenerate bases keep exactly the previous He-style scale: ω std = gain / √(in·N·‖φ‖²)."""
    torch.manual_seed(0)
    m = GDConv2d(16, 8, 7, num_bases=2, order=3, init="fixed")
    norms = m.basis().pow(2).sum((-2, -1))  # (B, N)
    expected = (2.0 / (16 * 10 * norms)).sqrt().repeat_interleave(4, dim=0)  # (out, N)
    measured = m.weight.detach().std(dim=1)  # over inputs
    ratio = (measured / expected).mean()
    assert abs(ratio.item() - 1.0) < 0.1


# ============================================================================================ buffers
ALL = ("sigma", "mu", "theta")


@pytest.mark.parametrize("trainable", [(), ("sigma",), ("mu", "theta"), ("theta",), ALL])
@pytest.mark.parametrize("separated", [False, True])
def test_fixed_geometry_is_a_buffer(trainable: tuple[str, ...], separated: bool) -> None:
    m = GDConv2d(3, 4, 5, num_bases=2, order=2, trainable=trainable, separated=separated)
    full = GDConv2d(3, 4, 5, num_bases=2, order=2, separated=separated)
    params, buffers = dict(m.named_parameters()), dict(m.named_buffers())
    for g in ALL:
        assert (f"{g}_raw" in params) == (g in trainable)
        assert (f"{g}_raw" in buffers) == (g not in trainable)
        assert isinstance(getattr(m, f"{g}_raw"), nn.Parameter) == (g in trainable)
    assert list(m.state_dict()) == list(full.state_dict())  # same keys, same order
    assert no_weight_decay_names(m) == {f"{g}_raw" for g in trainable}
    m.load_state_dict(full.state_dict())  # strict, both ways
    full.load_state_dict(m.state_dict())
    for g in ALL:
        torch.testing.assert_close(getattr(m, f"{g}_raw"), getattr(full, f"{g}_raw"), rtol=0, atol=0)
    m(inputs(2, 3, 8, 8)).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # dtype moves, reparameterize and deepcopy treat buffers like the parameters
    m64 = copy.deepcopy(m).double()
    assert all(t.dtype == F64 for t in (m64.sigma_raw, m64.mu_raw, m64.theta_raw))
    m.eval()
    x = inputs(1, 3, 8, 8)
    with torch.no_grad():
        before = m(x)
        m.reparameterize()
        torch.testing.assert_close(m(x), before, rtol=1e-5, atol=1e-5)
    assert all(key.startswith("reparam_conv.") for key in m.state_dict())


def test_extra_repr_and_training_freeze_with_buffers() -> None:
    """``trainable=()`` layers show it; the ``none`` freeze policy cannot turn fixed geometry into a parameter."""
    from gdzoo.training.freeze import apply_freeze

    net = nn.Sequential(GDConv2d(3, 4, 5, trainable=()), nn.ReLU(), GDConv2d(4, 4, 3, trainable=("sigma",)))
    assert "trainable=()" in repr(net)
    names = apply_freeze(net, "none")
    assert not any(n.endswith(("mu_raw", "theta_raw")) or n == "0.sigma_raw" for n in names)
    assert "2.sigma_raw" in names


def test_rfnn_published_weights_load_strict() -> None:
    """``rfnn_fmnist``'s published state dict (geometry keys included) loads with ``strict=True``."""
    from pathlib import Path

    import timm
    from safetensors.torch import load_file

    import gdzoo  # noqa: F401  (registers the models)

    path = Path(__file__).resolve().parents[1] / "weights" / "rfnn_fmnist.fmnist" / "model.safetensors"
    if not path.exists():
        pytest.skip(f"{path} not in this checkout")
    model = timm.create_model("rfnn_fmnist").eval()
    state = load_file(path)
    model.load_state_dict(state, strict=True)
    layers = [m for m in model.modules() if isinstance(m, GDConv2d)]
    assert layers and all(not any(isinstance(getattr(m, f"{g}_raw"), nn.Parameter) for g in ALL) for m in layers)
    assert {k for k in state if k.endswith("_raw")} == {k for k in model.state_dict() if k.endswith("_raw")}
    assert all(p.requires_grad for p in model.parameters())
    # an RFNN: the published geometry is the fixed one the architecture defines, not a learned one
    fresh = timm.create_model("rfnn_fmnist").state_dict()
    learned = [k for k in state if k.endswith("_raw") and not torch.equal(state[k], fresh[k])]
    assert not learned, f"published rfnn_fmnist learned its geometry: {learned}"
