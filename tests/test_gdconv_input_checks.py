"""GDConv2d refuses what it cannot compute (issue 31, item 6): non-finite geometry, orders beyond what the dtype
evaluates accurately (the limit is measured and named), integer inputs (as nn.Conv2d)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gdzoo import GDConv2d
from gdzoo.kernels import derivative_orders
from gdzoo.kernels.basis import ORDER_RTOL, accurate_order
from gdzoo.layers import DAUConv2d

from _gd_reference import reference_basis


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", ["sigma_init", "mu_init", "theta_init", "sigma_min"])
def test_non_finite_geometry_is_refused(name: str, bad: float) -> None:
    kwargs = {"init": "fixed", name: bad}
    with pytest.raises(ValueError, match=rf"{name} must be (a )?finite"):
        GDConv2d(1, 2, 5, **kwargs)
    if name in ("sigma_init", "mu_init"):
        with pytest.raises(ValueError, match=rf"{name} must be finite"):
            GDConv2d(1, 2, 5, **{"init": "fixed", name: (1.0, bad)})


def _float32_error_at_worst_geometry(order: int, kernel: int) -> float:
    """The layer's float32 basis against the explicit-series float64 reference, σ at its floor, shifted by 1, at 45°:
    the largest error relative to each kernel's peak (inf when not finite)."""
    layer = GDConv2d(1, 1, kernel, order=order, init="fixed", sigma_init=1.0, dtype=torch.float64)  # float64 builds
    n = len(derivative_orders(order))
    sigma = torch.full((1, n, 2), 0.1 * (1 + 1e-6), dtype=torch.float64)
    mu, theta = torch.full((1, n, 2), 1.0, dtype=torch.float64), torch.full((1, n), math.pi / 4, dtype=torch.float64)
    with torch.no_grad():
        layer.sigma_raw.copy_(torch.log(torch.expm1(sigma - layer.sigma_min)))
        layer.mu_raw.copy_(mu)
        layer.theta_raw.copy_(theta)
        got = layer.float().basis().double()
    exact = reference_basis(sigma, mu, theta, order, (kernel, kernel))
    if not torch.isfinite(got).all():
        return math.inf
    peak = exact.abs().amax(dim=(-2, -1)).clamp_min(1e-3 * exact.abs().max())
    return ((got - exact).abs().amax(dim=(-2, -1)) / peak).max().item()


@pytest.mark.parametrize("kernel", [7, 31])
def test_the_order_limit_is_where_float32_stops_being_accurate(kernel: int) -> None:
    limit = accurate_order(100, (kernel, kernel), 0.1, torch.float32)
    assert 8 <= limit <= 16, limit  # 13 at 7×7, 11 at 31×31 with sigma_min 0.1 (measured)
    GDConv2d(1, 1, kernel, order=limit)  # builds
    with pytest.raises(ValueError, match=rf"order {limit + 1} is beyond what float32 evaluates on a {kernel}×{kernel} "
                                         rf"kernel with sigma_min 0.1: .* use order <= {limit}"):
        GDConv2d(1, 1, kernel, order=limit + 1)
    with pytest.raises(ValueError, match=rf"use order <= {limit}"):
        GDConv2d(1, 1, kernel, order=50)
    # the limit is the truth, checked against the independent reference: the next order is wrong in float32
    assert _float32_error_at_worst_geometry(limit + 2, kernel) > ORDER_RTOL


def test_float64_layers_and_larger_sigma_min_allow_higher_orders() -> None:
    GDConv2d(1, 1, 7, order=30, dtype=torch.float64)
    GDConv2d(1, 1, 7, order=20, sigma_min=0.45)
    assert accurate_order(100, (7, 7), 0.1, torch.float64) > accurate_order(100, (7, 7), 0.1, torch.float32)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64, torch.bool])
@pytest.mark.parametrize("make", [lambda: GDConv2d(1, 2, 3), lambda: DAUConv2d(1, 2, 3)], ids=["GDConv2d", "DAUConv2d"])
def test_integer_inputs_raise_as_nn_conv2d_does(make, dtype: torch.dtype) -> None:
    x = torch.ones(1, 1, 5, 5, dtype=dtype)
    with pytest.raises(RuntimeError):
        F.conv2d(x, torch.ones(2, 1, 3, 3), torch.zeros(2))
    with pytest.raises(RuntimeError, match=rf"expects a floating-point input, got {dtype}"):
        make()(x)
