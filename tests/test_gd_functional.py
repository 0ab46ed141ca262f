"""``gd_conv2d``, the functional form of GDConv2d: equal to the module, and to an independent float64 reference
(explicit Hermite series, an ``einsum`` dense weight, one ``F.conv2d``: tests/_gd_reference.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gdzoo import GDConv2d
from gdzoo.layers.gd_functional import gd_conv2d

from _gd_reference import assert_close_scaled, reference_basis

F64 = torch.float64

# (layer arguments, input channels, output channels): paths, groups (own and shared bases), spatial arguments
CASES = [
    (dict(num_bases=2, order=2), 3, 8),
    (dict(num_bases=2, order=3, impl="basis"), 3, 8),
    (dict(num_bases=2, order=2, separated=True, impl="dense"), 3, 8),
    (dict(num_bases=4, order=1, separated=True, impl="factorized"), 4, 8),
    (dict(num_bases=4, order=2, groups=4), 8, 8),  # one basis per channel group
    (dict(num_bases=1, order=2, groups=8, impl="basis"), 8, 8),  # depthwise, one basis shared by every channel
    (dict(num_bases=2, order=2, stride=2, padding=1, dilation=2), 3, 4),
    (dict(num_bases=1, order=2, padding="valid", separated=True), 3, 4),
]


def _layer(kwargs: dict, cin: int, cout: int, dtype: torch.dtype = torch.float32) -> GDConv2d:
    torch.manual_seed(0)
    return GDConv2d(cin, cout, 5, dtype=dtype, **kwargs)


def _functional(layer: GDConv2d, x: torch.Tensor, sigma: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor,
                weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """``gd_conv2d`` with ``layer``'s settings and the given geometry and weights."""
    weight = weights["weight_out"] if layer.separated else weights["weight"]
    return gd_conv2d(x, sigma, mu, theta, weight, weights.get("bias"), layer.stride, layer.padding, layer.dilation,
                     layer.groups, kernel_size=layer.kernel_size, weight_in=weights.get("weight_in"),
                     padding_mode=layer.padding_mode, impl=layer.impl)


def _naive(layer: GDConv2d, x: torch.Tensor, sigma: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor,
           weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """Eqs. (1)–(4) written out: the reference basis, output ``o`` of group ``o // (out/g)`` on basis ``o // (out/B)``,
    its dense kernel by ``einsum``, one grouped ``F.conv2d``."""
    phi = reference_basis(sigma, mu, theta, layer.order, layer.kernel_size)  # (B, N, kH, kW)
    phi_out = phi.repeat_interleave(layer.out_channels // layer.num_bases, dim=0)  # (out, N, kH, kW)
    if layer.separated:
        beta = weights["weight_in"].repeat_interleave(layer.out_channels // layer.num_bases, dim=0)  # (out, N, in/g)
        dense = torch.einsum("on,oni,onhw->oihw", weights["weight_out"], beta, phi_out)
    else:
        dense = torch.einsum("oin,onhw->oihw", weights["weight"], phi_out)
    return F.conv2d(x, dense, weights.get("bias"), layer.stride, layer.padding, layer.dilation, layer.groups)


def _weights(layer: GDConv2d, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    names = ("weight_out", "weight_in") if layer.separated else ("weight",)
    return {name: getattr(layer, name).detach().to(dtype) for name in (*names, "bias")}


@pytest.mark.parametrize(("kwargs", "cin", "cout"), CASES)
def test_functional_is_the_module(kwargs: dict, cin: int, cout: int) -> None:
    """GDConv2d.forward and gd_conv2d on the layer's σ, μ, θ and weights give the same output, batched or not."""
    layer = _layer(kwargs, cin, cout)
    x = torch.randn(2, cin, 13, 12)
    geometry = (layer.sigma.detach(), layer.mu.detach(), layer.theta.detach())
    with torch.no_grad():
        torch.testing.assert_close(_functional(layer, x, *geometry, _weights(layer)), layer(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(_functional(layer, x[0], *geometry, _weights(layer)), layer(x[0]), rtol=1e-6,
                                   atol=1e-6)


@pytest.mark.parametrize(("kwargs", "cin", "cout"), CASES)
def test_functional_matches_naive_reference(kwargs: dict, cin: int, cout: int) -> None:
    """float64: gd_conv2d equals eqs. (1)–(4) built independently, values and gradients in σ, μ, θ and the weights."""
    layer = _layer(kwargs, cin, cout, dtype=F64)
    torch.manual_seed(1)
    x = torch.randn(2, cin, 13, 12, dtype=F64)
    leaves = [t.detach().clone().requires_grad_(True) for t in (layer.sigma, layer.mu, layer.theta)]
    weights = {k: v.clone().requires_grad_(True) for k, v in _weights(layer, F64).items()}
    ours = _functional(layer, x, *leaves, weights)
    ref = _naive(layer, x, *leaves, weights)
    assert_close_scaled(ours, ref, 1e-10, "output")
    probe = torch.randn_like(ref)
    inputs = [*leaves, *weights.values()]
    grads = torch.autograd.grad((ours * probe).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * probe).sum(), inputs)
    for name, g, r in zip(["sigma", "mu", "theta", *weights], grads, ref_grads):
        assert_close_scaled(g, r, 1e-9, f"d/d{name}")


def test_functional_reflect_padding_matches_padded_reference() -> None:
    """A non-zero padding mode pads as nn.Conv2d does: equal to the reference on the explicitly padded input."""
    layer = _layer(dict(num_bases=2, order=2, padding_mode="reflect"), 3, 4, dtype=F64)
    x = torch.randn(1, 3, 9, 10, dtype=F64)
    geometry = (layer.sigma.detach(), layer.mu.detach(), layer.theta.detach())
    ours = _functional(layer, x, *geometry, _weights(layer, F64))
    valid = _layer(dict(num_bases=2, order=2, padding="valid"), 3, 4, dtype=F64)
    ref = _naive(valid, F.pad(x, (2, 2, 2, 2), mode="reflect"), *geometry, _weights(layer, F64))
    assert_close_scaled(ours, ref, 1e-10, "reflect-padded output")


def test_functional_rejects_bad_arguments() -> None:
    """Wrong shapes, a kernel count that is no basis size, and a path the combination cannot take are named."""
    sigma, mu, theta = torch.ones(2, 6, 2), torch.zeros(2, 6, 2), torch.zeros(2, 6)
    x, w = torch.randn(1, 3, 8, 8), torch.randn(8, 3, 6)
    with pytest.raises(ValueError, match=r"got shapes \(2, 6, 2\), \(2, 6, 2\), \(2, 5\)"):
        gd_conv2d(x, sigma, mu, torch.zeros(2, 5), w, kernel_size=5)
    with pytest.raises(ValueError, match="got 4"):
        gd_conv2d(x, torch.ones(2, 4, 2), torch.zeros(2, 4, 2), torch.zeros(2, 4), torch.randn(8, 3, 4), kernel_size=5)
    with pytest.raises(ValueError, match=r"weight \(ω\) must have shape \(8, 3, 6\) .* got \(8, 2, 6\)"):
        gd_conv2d(x, sigma, mu, theta, torch.randn(8, 2, 6), kernel_size=5)
    with pytest.raises(ValueError, match=r"weight_in \(β\) must have shape \(2, 6, 3\) .* got \(2, 6, 4\)"):
        gd_conv2d(x, sigma, mu, theta, torch.randn(8, 6), kernel_size=5, weight_in=torch.randn(2, 6, 4))
    with pytest.raises(ValueError, match="must be a multiple of the 2 bases"):
        gd_conv2d(x, sigma, mu, theta, torch.randn(7, 3, 6), kernel_size=5)
    with pytest.raises(ValueError, match="impl='factorized' needs separated=True"):
        gd_conv2d(x, sigma, mu, theta, w, kernel_size=5, impl="factorized")
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        gd_conv2d(x, sigma, mu, theta, w, kernel_size=5, padding_mode="mirror")
    with pytest.raises(ValueError, match="groups must be a positive int dividing"):
        gd_conv2d(x, sigma, mu, theta, w, kernel_size=5, groups=2)
    with pytest.raises(ValueError, match="floating-point"):
        gd_conv2d(x.long(), sigma, mu, theta, w, kernel_size=5)
