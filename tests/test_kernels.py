"""Correctness of the kernel math in :mod:`gdzoo.kernels` against independent references.

Every expected value here is computed by code written in this file (closed forms, the paper's
explicit Hermite series, or ``torch.autograd`` differentiation of the plain Gaussian), never by
gdzoo itself.
"""

from __future__ import annotations

import math

import pytest
import torch

from gdzoo.kernels import (
    derivative_orders,
    gaussian,
    gaussian_derivative_1d,
    gaussian_derivative_basis,
    hermite_polynomials,
    kernel_coordinates,
    num_basis_kernels,
)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------
def ref_gaussian(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``exp(-x²/2σ²) / (√(2π) σ)``, written out."""
    return torch.exp(-(x**2) / (2.0 * sigma**2)) / (math.sqrt(2.0 * math.pi) * sigma)


def ref_hermite_series(t: torch.Tensor, p: int) -> torch.Tensor:
    """The paper's explicit series ``H_p(t) = Σ_i (-1)^i p! / (i! (p-2i)!) (2t)^(p-2i)``."""
    total = torch.zeros_like(t)
    for i in range(p // 2 + 1):
        coef = (-1) ** i * math.factorial(p) / (math.factorial(i) * math.factorial(p - 2 * i))
        total = total + coef * (2.0 * t) ** (p - 2 * i)
    return total


def ref_gd1(y: torch.Tensor, sigma: torch.Tensor | float, p: int) -> torch.Tensor:
    """``G_p`` via the explicit Hermite series (differentiable in ``y`` and ``sigma``)."""
    scale = math.sqrt(2.0) * sigma
    return (-1.0 / scale) ** p * ref_hermite_series(y / scale, p) * ref_gaussian(y, sigma)


def closed_form_gd1(x: torch.Tensor, s: float, p: int) -> torch.Tensor:
    """Hand-derived ``G_p`` for ``p <= 4``."""
    g = ref_gaussian(x, s)
    forms = {
        0: lambda: g,
        1: lambda: -x / s**2 * g,
        2: lambda: (x**2 - s**2) / s**4 * g,
        3: lambda: -(x**3 - 3 * x * s**2) / s**6 * g,
        4: lambda: (x**4 - 6 * x**2 * s**2 + 3 * s**4) / s**8 * g,
    }
    return forms[p]()


def autograd_gd1(x: torch.Tensor, s: float, p: int) -> torch.Tensor:
    """``G_p`` by differentiating the Gaussian ``p`` times with autograd (element-wise)."""
    x = x.detach().clone().requires_grad_(True)
    f = ref_gaussian(x, s)
    for _ in range(p):
        (f,) = torch.autograd.grad(f.sum(), x, create_graph=True)
    return f.detach()


def tap_grid(kh: int, kw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x1, x2)`` of every tap, built with explicit loops: x1 = c-(kW-1)/2, x2 = r-(kH-1)/2."""
    x1 = torch.tensor([[c - (kw - 1) / 2 for c in range(kw)] for _ in range(kh)], dtype=F64)
    x2 = torch.tensor([[r - (kh - 1) / 2 for _ in range(kw)] for r in range(kh)], dtype=F64)
    return x1, x2


def autograd_kernel_2d(
    p: int, q: int, sigma: tuple[float, float], mu: tuple[float, float], theta: float, size: tuple[int, int]
) -> torch.Tensor:
    """``φ_{p,q}`` as directional derivatives (in tap space) of the rotated, shifted Gaussian.

    ``F(x) = G(u1 - μ1; σ1) G(u2 - μ2; σ2)`` with ``u = R(θ) x``; ``∂/∂u1 = cosθ ∂/∂x1 + sinθ ∂/∂x2``
    and ``∂/∂u2 = -sinθ ∂/∂x1 + cosθ ∂/∂x2``, applied ``p`` and ``q`` times with autograd.
    """
    x1, x2 = tap_grid(*size)
    x1.requires_grad_(True)
    x2.requires_grad_(True)
    c, s = math.cos(theta), math.sin(theta)
    u1 = x1 * c + x2 * s
    u2 = -x1 * s + x2 * c
    f = ref_gaussian(u1 - mu[0], sigma[0]) * ref_gaussian(u2 - mu[1], sigma[1])
    for direction in [(c, s)] * p + [(-s, c)] * q:
        g1, g2 = torch.autograd.grad(f.sum(), (x1, x2), create_graph=True)
        f = direction[0] * g1 + direction[1] * g2
    return f.detach()


def naive_basis(
    sigma: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, orders: list[tuple[int, int]], size: tuple[int, int]
) -> torch.Tensor:
    """Differentiable, loop-per-kernel basis ``(B, N, kH, kW)`` from the explicit Hermite series."""
    x1, x2 = tap_grid(*size)
    x1, x2 = x1.to(sigma.dtype), x2.to(sigma.dtype)
    bases = []
    for b in range(sigma.shape[0]):
        kernels = []
        for n, (p, q) in enumerate(orders):
            c, s = torch.cos(theta[b, n]), torch.sin(theta[b, n])
            y1 = x1 * c + x2 * s - mu[b, n, 0]
            y2 = -x1 * s + x2 * c - mu[b, n, 1]
            kernels.append(ref_gd1(y1, sigma[b, n, 0], p) * ref_gd1(y2, sigma[b, n, 1], q))
        bases.append(torch.stack(kernels))
    return torch.stack(bases)


def random_geometry(b: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random σ in [0.6, 2], μ in [-1, 1], θ in [-π, π], float64."""
    gen = torch.Generator().manual_seed(seed)
    sigma = 0.6 + 1.4 * torch.rand(b, n, 2, generator=gen, dtype=F64)
    mu = 2 * torch.rand(b, n, 2, generator=gen, dtype=F64) - 1
    theta = (2 * torch.rand(b, n, generator=gen, dtype=F64) - 1) * math.pi
    return sigma, mu, theta


def basis(sigma: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, order: int,
          size: tuple[int, int]) -> torch.Tensor:
    """gdzoo's basis for the full order-``order`` enumeration."""
    return gaussian_derivative_basis(sigma, mu, theta, torch.tensor(derivative_orders(order)), size)


def single(p: int, q: int, sigma, mu, theta: float, size: tuple[int, int]) -> torch.Tensor:
    """gdzoo's kernel φ_{p,q} for one geometry, through ``gaussian_derivative_basis``."""
    return gaussian_derivative_basis(
        torch.tensor([[sigma]], dtype=F64), torch.tensor([[mu]], dtype=F64), torch.tensor([[theta]], dtype=F64),
        torch.tensor([[p, q]]), size,
    )[0, 0]


# ---------------------------------------------------------------------------------------------
# Hermite polynomials and 1-D derivatives
# ---------------------------------------------------------------------------------------------
def test_hermite_matches_paper_series() -> None:
    """H_0..H_10 (recurrence) equal the paper's explicit series, float64."""
    t = torch.linspace(-3, 3, 41, dtype=F64)
    got = hermite_polynomials(t, 10)
    assert got.shape == (11, 41)
    for p in range(11):
        torch.testing.assert_close(got[p], ref_hermite_series(t, p), rtol=1e-12, atol=1e-9)


def test_hermite_known_values() -> None:
    """A few textbook values: H_2 = 4t²-2, H_3 = 8t³-12t at t = 0.5."""
    h = hermite_polynomials(torch.tensor([0.5], dtype=F64), 3)[:, 0]
    torch.testing.assert_close(h, torch.tensor([1.0, 1.0, -1.0, -5.0], dtype=F64))


def test_gaussian_closed_form() -> None:
    """``gaussian`` equals exp(-x²/2σ²)/(√(2π)σ) for several σ."""
    x = torch.linspace(-5, 5, 31, dtype=F64)
    for s in (0.3, 1.0, 2.7):
        torch.testing.assert_close(gaussian(x, s), ref_gaussian(x, s), rtol=1e-12, atol=0)


@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.3])
def test_1d_derivatives_closed_forms(sigma: float) -> None:
    """G_0..G_4 vs hand-written closed forms."""
    x = torch.linspace(-6, 6, 49, dtype=F64)
    got = gaussian_derivative_1d(x, sigma, 4)
    for p in range(5):
        torch.testing.assert_close(got[p], closed_form_gd1(x, sigma, p), rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.7])
def test_1d_derivatives_autograd(sigma: float) -> None:
    """G_0..G_6 vs repeated autograd differentiation of the Gaussian, float64."""
    x = torch.linspace(-5, 5, 37, dtype=F64)
    got = gaussian_derivative_1d(x, sigma, 6)
    for p in range(7):
        ref = autograd_gd1(x, sigma, p)
        scale = ref.abs().max()
        torch.testing.assert_close(got[p] / scale, ref / scale, rtol=0, atol=1e-12)


def test_1d_derivatives_higher_orders_series() -> None:
    """Orders up to 10 vs the paper's relation evaluated with the explicit series."""
    x = torch.linspace(-4, 4, 33, dtype=F64)
    got = gaussian_derivative_1d(x, 1.3, 10)
    for p in range(11):
        ref = ref_gd1(x, 1.3, p)
        torch.testing.assert_close(got[p], ref, rtol=1e-9, atol=1e-9 * ref.abs().max().item())


def test_1d_sigma_broadcast() -> None:
    """A tensor σ broadcasts against x: each column uses its own σ."""
    x = torch.linspace(-3, 3, 7, dtype=F64)[:, None]
    sigma = torch.tensor([0.7, 1.0, 1.9], dtype=F64)
    got = gaussian_derivative_1d(x, sigma, 3)
    assert got.shape == (4, 7, 3)
    for k, s in enumerate(sigma.tolist()):
        for p in range(4):
            torch.testing.assert_close(got[p, :, k], closed_form_gd1(x[:, 0], s, p), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("p", range(7))
def test_1d_parity(p: int) -> None:
    """G_p(-x) = (-1)^p G_p(x)."""
    x = torch.linspace(0.1, 4, 20, dtype=F64)
    pos = gaussian_derivative_1d(x, 1.1, 6)[p]
    neg = gaussian_derivative_1d(-x, 1.1, 6)[p]
    torch.testing.assert_close(neg, (-1) ** p * pos, rtol=1e-13, atol=1e-15)


def test_1d_stable_for_small_and_large_sigma() -> None:
    """No NaN/Inf for tiny and large σ and far-out x, float32."""
    x = torch.linspace(-20, 20, 81)
    for s in (0.05, 0.1, 10.0):
        assert torch.isfinite(gaussian_derivative_1d(x, s, 8)).all()


def test_hermite_negative_order_raises() -> None:
    """A negative order is rejected."""
    with pytest.raises(ValueError, match="order"):
        hermite_polynomials(torch.zeros(3), -1)


# ---------------------------------------------------------------------------------------------
# Enumeration and coordinates
# ---------------------------------------------------------------------------------------------
def test_enumeration_order() -> None:
    """(0,0),(0,1),(1,0),(0,2),(1,1),(2,0),(0,3),... — the authors' order."""
    assert derivative_orders(0) == [(0, 0)]
    assert derivative_orders(3) == [
        (0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (2, 0), (0, 3), (1, 2), (2, 1), (3, 0),
    ]
    for k in range(8):
        orders = derivative_orders(k)
        assert len(orders) == num_basis_kernels(k) == (k + 1) * (k + 2) // 2
        assert sorted(orders) == sorted((p, q) for p in range(k + 1) for q in range(k + 1) if p + q <= k)
        totals = [p + q for p, q in orders]
        assert totals == sorted(totals)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_enumeration_rejects_bad_order(bad: object) -> None:
    """Orders that are not non-negative ints raise ValueError naming ``order``."""
    with pytest.raises(ValueError, match="order"):
        derivative_orders(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [(3, 3), (4, 4), (2, 5), (6, 3)])
def test_kernel_coordinates_convention(size: tuple[int, int]) -> None:
    """x1 grows with the column, x2 with the row, both centred (loop-built reference)."""
    x1, x2 = kernel_coordinates(size, dtype=F64)
    r1, r2 = tap_grid(*size)
    torch.testing.assert_close(x1, r1, rtol=0, atol=0)
    torch.testing.assert_close(x2, r2, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# 2-D kernels vs autograd of the rotated, shifted, anisotropic Gaussian
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size, order, seed",
    [((5, 5), 3, 0), ((4, 4), 3, 1), ((5, 4), 2, 2), ((3, 6), 3, 3), ((7, 7), 4, 4), ((1, 1), 2, 5)]
)
def test_basis_vs_autograd_reference(size: tuple[int, int], order: int, seed: int) -> None:
    """Every φ^{b,n} (random σ, μ, θ per kernel, B=2) equals the autograd reference, float64."""
    orders = derivative_orders(order)
    sigma, mu, theta = random_geometry(2, len(orders), seed)
    got = basis(sigma, mu, theta, order, size)
    assert got.shape == (2, len(orders), *size)
    assert got.dtype == F64
    for b in range(2):
        for n, (p, q) in enumerate(orders):
            ref = autograd_kernel_2d(
                p, q, tuple(sigma[b, n].tolist()), tuple(mu[b, n].tolist()), theta[b, n].item(), size
            )
            torch.testing.assert_close(got[b, n], ref, rtol=1e-10, atol=1e-12, msg=f"b={b} (p,q)={(p, q)}")


def test_basis_leading_dims() -> None:
    """Arbitrary leading dims (none, or two) give the same kernels as the (B, N) layout."""
    orders = derivative_orders(2)
    sigma, mu, theta = random_geometry(6, len(orders), 7)
    ref = basis(sigma, mu, theta, 2, (5, 5))
    no_lead = basis(sigma[0], mu[0], theta[0], 2, (5, 5))
    torch.testing.assert_close(no_lead, ref[0], rtol=0, atol=1e-15)
    two_lead = basis(sigma.view(2, 3, -1, 2), mu.view(2, 3, -1, 2), theta.view(2, 3, -1), 2, (5, 5))
    torch.testing.assert_close(two_lead.view_as(ref), ref, rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(7, 7), (6, 6), (5, 8)])
def test_2d_parity(size: tuple[int, int]) -> None:
    """μ=0: flipping both axes gives (-1)^(p+q); with θ=0 flipping columns gives (-1)^p, rows (-1)^q."""
    for p, q in derivative_orders(3):
        rotated = single(p, q, (1.2, 0.8), (0.0, 0.0), 0.7, size)
        torch.testing.assert_close(rotated.flip(0, 1), (-1) ** (p + q) * rotated, rtol=1e-12, atol=1e-15)
        axis = single(p, q, (1.2, 0.8), (0.0, 0.0), 0.0, size)
        torch.testing.assert_close(axis.flip(1), (-1) ** p * axis, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(axis.flip(0), (-1) ** q * axis, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("size", [7, 6])
def test_rotation_quarter_turn_swaps_axes(size: int) -> None:
    """θ=π/2 gives u1 = x2, u2 = -x1, hence φ_{p,q}(σ1,σ2; π/2) = (-1)^q φ_{q,p}(σ2,σ1; 0)."""
    k = (size, size)
    for p, q in derivative_orders(3):
        turned = single(p, q, (0.9, 1.6), (0.0, 0.0), math.pi / 2, k)
        swapped = single(q, p, (1.6, 0.9), (0.0, 0.0), 0.0, k)
        torch.testing.assert_close(turned, (-1) ** q * swapped, rtol=1e-10, atol=1e-13)


def test_rotation_half_turn_negates_shift() -> None:
    """θ+π maps u to -u: φ_{p,q}(θ+π, μ) = (-1)^(p+q) φ_{p,q}(θ, -μ)."""
    for p, q in derivative_orders(3):
        a = single(p, q, (1.1, 0.7), (0.4, -0.3), 0.3 + math.pi, (6, 7))
        b = single(p, q, (1.1, 0.7), (-0.4, 0.3), 0.3, (6, 7))
        torch.testing.assert_close(a, (-1) ** (p + q) * b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("shift", [(1, 0), (0, 1), (-2, 1), (2, -2)])
def test_integer_shift_translates(shift: tuple[int, int]) -> None:
    """θ=0, integer μ=(a, b): φ_μ[r, c] = φ_0[r - b, c - a] on the interior taps."""
    a, b = shift
    kh, kw = 9, 8
    for p, q in derivative_orders(2):
        moved = single(p, q, (1.0, 1.3), (float(a), float(b)), 0.0, (kh, kw))
        still = single(p, q, (1.0, 1.3), (0.0, 0.0), 0.0, (kh, kw))
        for r in range(max(0, b), min(kh, kh + b)):
            for c in range(max(0, a), min(kw, kw + a)):
                assert abs(moved[r, c].item() - still[r - b, c - a].item()) < 1e-14


def test_mass_and_centre_of_large_kernel() -> None:
    """G_{0,0} on a large grid sums to 1 and its centre of mass is x = Rᵀμ."""
    theta, mu = 0.7, (0.6, -0.9)
    g = single(0, 0, (1.5, 2.5), mu, theta, (31, 31))
    assert abs(g.sum().item() - 1.0) < 1e-9
    x1, x2 = tap_grid(31, 31)
    c, s = math.cos(theta), math.sin(theta)
    assert abs((g * x1).sum().item() - (mu[0] * c - mu[1] * s)) < 1e-8
    assert abs((g * x2).sum().item() - (mu[0] * s + mu[1] * c)) < 1e-8
    for p, q in derivative_orders(3)[1:]:  # derivatives integrate to 0
        assert abs(single(p, q, (1.5, 2.5), mu, theta, (31, 31)).sum().item()) < 1e-9


# ---------------------------------------------------------------------------------------------
# Gradients of the basis (custom backward)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, order", [((5, 5), 3), ((4, 6), 2), ((6, 6), 4)])
def test_basis_backward_vs_naive_autograd(size: tuple[int, int], order: int) -> None:
    """Custom backward (∂/∂σ, ∂/∂μ, ∂/∂θ) equals autograd through the naive series implementation."""
    orders = derivative_orders(order)
    sigma, mu, theta = random_geometry(2, len(orders), 11 + order)
    upstream = torch.randn(2, len(orders), *size, dtype=F64, generator=torch.Generator().manual_seed(3))

    leaves = [t.clone().requires_grad_(True) for t in (sigma, mu, theta)]
    got = gaussian_derivative_basis(*leaves, torch.tensor(orders), size)
    got_grads = torch.autograd.grad((got * upstream).sum(), leaves)

    ref_leaves = [t.clone().requires_grad_(True) for t in (sigma, mu, theta)]
    ref = naive_basis(*ref_leaves, orders, size)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), ref_leaves)

    torch.testing.assert_close(got.detach(), ref.detach(), rtol=1e-10, atol=1e-12)
    for name, g, r in zip(("sigma", "mu", "theta"), got_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("which",
                         [(True, True, True), (True, False, False), (False, True, False), (False, False, True)])
def test_basis_gradcheck(which: tuple[bool, bool, bool]) -> None:
    """torch.autograd.gradcheck of the basis for every subset of σ, μ, θ requiring grad (float64)."""
    orders = torch.tensor(derivative_orders(2))
    sigma, mu, theta = random_geometry(2, 6, 21)
    inputs = [t.clone().requires_grad_(w) for t, w in zip((sigma, mu, theta), which)]
    assert torch.autograd.gradcheck(
        lambda s, m, t: gaussian_derivative_basis(s, m, t, orders, (4, 5)), inputs, eps=1e-6, atol=1e-7
    )


def test_basis_no_grad_forward_matches() -> None:
    """The forward without any input requiring grad equals the one with grads enabled."""
    orders = derivative_orders(3)
    sigma, mu, theta = random_geometry(1, len(orders), 5)
    plain = basis(sigma, mu, theta, 3, (5, 5))
    tracked = basis(sigma.requires_grad_(True), mu, theta, 3, (5, 5))
    torch.testing.assert_close(plain, tracked.detach(), rtol=0, atol=0)


def test_basis_max_order_hint_same_result() -> None:
    """Passing ``max_order`` (host-side hint, any value ≥ the highest order) changes nothing, grads included."""
    order = 3
    orders = torch.tensor(derivative_orders(order))
    sigma, mu, theta = random_geometry(2, len(orders), 31)
    results = []
    for hint in (None, order, order + 2):
        leaves = [t.clone().requires_grad_(True) for t in (sigma, mu, theta)]
        out = gaussian_derivative_basis(*leaves, orders, (5, 6), max_order=hint)
        grads = torch.autograd.grad(out.sum(), leaves)
        results.append((out.detach(), grads))
    for out, grads in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=0, atol=1e-15)
        for g, g0 in zip(grads, results[0][1]):
            torch.testing.assert_close(g, g0, rtol=0, atol=1e-13)
