"""``GDConv2d``'s derivatives of every order are exact: double backward, Hessian-vector products against finite
differences, forward AD and ``torch.func`` transforms against plain autograd."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from gdzoo import GDConv2d
from gdzoo.kernels import derivative_orders, gaussian_derivative_basis
from gdzoo.kernels.basis import gaussian_derivative_basis_reference

from _gdconv_cases import F64, PATH_IDS, PATHS, inputs, make

pytestmark = pytest.mark.usefixtures("single_thread")


# ============================================================================================ higher order
def functional(m: GDConv2d) -> tuple[list[str], list[torch.Tensor], Callable]:
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in m.named_parameters()]

    def fn(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))

    return names, params, fn


@pytest.mark.parametrize(("separated", "impl"), PATHS, ids=PATH_IDS)
def test_gradgradcheck_layer(separated: bool, impl: str) -> None:
    """Second derivatives (float64) w.r.t. input, σ/μ/θ raw, combination weights and bias."""
    m = make(separated, impl, dtype=F64, kernel_size=3)
    names, params, fn = functional(m)
    assert {"sigma_raw", "mu_raw", "theta_raw", "bias"} <= set(names)
    x = inputs(1, 3, 4, 4, dtype=F64).requires_grad_(True)
    assert torch.autograd.gradgradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("separated", "impl"), PATHS, ids=PATH_IDS)
def test_hessian_vector_product_vs_finite_differences(separated: bool, impl: str) -> None:
    """HVP by double backward equals the central difference of the gradient along the same direction."""
    m = make(separated, impl, dtype=F64)
    names, params, fn = functional(m)
    x = inputs(2, 3, 7, 7, dtype=F64)
    target = inputs(2, 4, 7, 7, seed=2, dtype=F64)

    def loss(*ps: torch.Tensor) -> torch.Tensor:
        return (fn(x, *ps) - target).pow(2).mean() + fn(x, *ps).tanh().sum()

    gen = torch.Generator().manual_seed(3)
    v = [torch.randn(p.shape, generator=gen, dtype=F64) for p in params]
    grads = torch.autograd.grad(loss(*params), params, create_graph=True)
    hvp = torch.autograd.grad(sum((g * d).sum() for g, d in zip(grads, v)), params)

    def gradient(ps: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        ps = [p.detach().requires_grad_(True) for p in ps]
        return torch.autograd.grad(loss(*ps), ps)

    eps = 1e-5
    plus = gradient([p.detach() + eps * d for p, d in zip(params, v)])
    minus = gradient([p.detach() - eps * d for p, d in zip(params, v)])
    for name, h, gp, gm in zip(names, hvp, plus, minus):
        fd = (gp - gm) / (2 * eps)
        torch.testing.assert_close(h, fd, rtol=1e-6, atol=1e-8 * max(1.0, fd.abs().max().item()), msg=name)
        assert fd.abs().max() > 1e-6, name  # the direction really moves every gradient


@pytest.mark.parametrize("which",
                         [(True, True, True), (True, False, False), (False, True, False), (False, False, True)])
def test_basis_gradgradcheck_and_forward_ad(which: tuple[bool, bool, bool]) -> None:
    """The basis function alone: second order and forward mode, for every subset of σ, μ, θ."""
    orders = torch.tensor(derivative_orders(2))
    gen = torch.Generator().manual_seed(4)
    sigma = 0.6 + torch.rand(2, 6, 2, generator=gen, dtype=F64)
    mu = torch.rand(2, 6, 2, generator=gen, dtype=F64) - 0.5
    theta = torch.rand(2, 6, generator=gen, dtype=F64) * 6 - 3
    leaves = [t.requires_grad_(w) for t, w in zip((sigma, mu, theta), which)]

    def fn(s: torch.Tensor, m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return gaussian_derivative_basis(s, m, t, orders, (4, 5))

    assert torch.autograd.gradgradcheck(fn, leaves, eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, check_forward_ad=True,
                                     check_batched_grad=True, check_batched_forward_grad=True)


def test_torch_func_transforms_match_plain_autograd() -> None:
    """``grad``, ``jacrev``, ``jacfwd``, ``hessian``, ``jvp`` and ``vmap`` through the layer (float64)."""
    m = make(False, "dense", dtype=F64, kernel_size=3)
    x = inputs(1, 3, 5, 5, dtype=F64)
    params = {n: p.detach() for n, p in m.named_parameters()}
    geometry = {n: params[n] for n in ("sigma_raw", "mu_raw", "theta_raw")}

    def loss(geom: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.func.functional_call(m, {**params, **geom}, (x,)).tanh().sum()

    # plain autograd reference: gradient and full Hessian of the same loss
    flat = torch.cat([g.reshape(-1) for g in geometry.values()]).requires_grad_(True)

    def unflatten(v: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for n, g in geometry.items():
            out[n] = v[i:i + g.numel()].view_as(g)
            i += g.numel()
        return out

    ref_grad = torch.autograd.grad(loss(unflatten(flat)), flat)[0]
    ref_hess = torch.autograd.functional.hessian(lambda v: loss(unflatten(v)), flat.detach())

    flat0 = flat.detach()
    got_grad = torch.func.grad(lambda v: loss(unflatten(v)))(flat0)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-10, atol=1e-12)
    for transform in (torch.func.jacrev, torch.func.jacfwd):
        torch.testing.assert_close(transform(lambda v: loss(unflatten(v)))(flat0), ref_grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.func.hessian(lambda v: loss(unflatten(v)))(flat0), ref_hess,
                               rtol=1e-8, atol=1e-10)
    direction = torch.randn(flat0.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    _, tangent = torch.func.jvp(lambda v: loss(unflatten(v)), (flat0,), (direction,))
    torch.testing.assert_close(tangent, ref_grad @ direction, rtol=1e-10, atol=1e-12)
    # per-sample gradients with vmap(grad)
    xs = inputs(3, 1, 3, 5, 5, dtype=F64)

    def sample_loss(geom: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(m, {**params, **geom}, (xi,)).tanh().sum()

    per_sample = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0))(geometry, xs)
    for i in range(3):
        g = {n: t.clone().requires_grad_(True) for n, t in geometry.items()}
        ref = torch.autograd.grad(sample_loss(g, xs[i]), list(g.values()))
        for (n, got), want in zip(per_sample.items(), ref):
            torch.testing.assert_close(got[i], want, rtol=1e-10, atol=1e-12, msg=n)


def test_reference_basis_matches_function() -> None:
    """The plain-ops basis (used under ``torch.jit.trace``) equals the custom Function, gradients included."""
    orders = torch.tensor(derivative_orders(3))
    gen = torch.Generator().manual_seed(6)
    geometry = [0.6 + torch.rand(2, 10, 2, generator=gen, dtype=F64), torch.rand(2, 10, 2, generator=gen, dtype=F64),
                torch.rand(2, 10, generator=gen, dtype=F64)]
    a = [t.clone().requires_grad_(True) for t in geometry]
    b = [t.clone().requires_grad_(True) for t in geometry]
    out_a = gaussian_derivative_basis(*a, orders, (5, 6), max_order=3)
    out_b = gaussian_derivative_basis_reference(*b, orders, (5, 6), max_order=3)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-15)
    up = torch.randn(out_a.shape, generator=gen, dtype=F64)
    for ga, gb in zip(torch.autograd.grad((out_a * up).sum(), a), torch.autograd.grad((out_b * up).sum(), b)):
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)
