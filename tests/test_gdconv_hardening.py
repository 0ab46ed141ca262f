"""Correctness hardening of ``GDConv2d`` (issue 20; issue 13 item 5).

- the no-grad kernel cache follows every change of the tensors it comes from: fused optimizers,
  ``param.data`` writes and in-place ops under ``no_grad`` (none of which all bump version counters);
- it is bypassed while the forward is captured (``torch.jit.trace``, ``torch.export``, ``torch.compile``,
  ``torch.func``), and never pickled or deep-copied;
- derivatives of every order are exact (double backward, Hessian-vector products, ``torch.func``);
- ``init='fixed'`` on 1×k and 1×1 grids (exactly-zero odd-order kernels) draws ordinary-scale weights;
- geometry left out of ``trainable`` is a persistent buffer under the same name (timm: every parameter trains).

Every expected value comes from a fresh computation: ``dense_weight()`` (which never uses the cache)
through ``F.conv2d``, finite differences, or an independent loop.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn

import gdzoo.layers.kernel_cache as kernel_cache_module
from gdzoo import GDConv2d
from gdzoo.kernels import derivative_orders, gaussian_derivative_basis
from gdzoo.kernels.basis import gaussian_derivative_basis_reference
from gdzoo.layers import no_weight_decay_names
from gdzoo.layers.gd_functional import gd_conv2d_dense

F64 = torch.float64
PATHS = [(False, "dense"), (False, "basis"), (True, "dense"), (True, "factorized")]
PATH_IDS = [f"{'sep' if s else 'nonsep'}-{i}" for s, i in PATHS]

pytestmark = pytest.mark.usefixtures("single_thread")


def make(separated: bool = False, impl: str = "auto", seed: int = 0, dtype: torch.dtype = torch.float32,
         **kwargs: Any) -> GDConv2d:
    torch.manual_seed(seed)
    m = GDConv2d(3, 4, kwargs.pop("kernel_size", 5), num_bases=2, order=2, separated=separated, impl=impl,
                 dtype=dtype, **kwargs)
    with torch.no_grad():
        if m.bias is not None:
            m.bias.uniform_(-0.5, 0.5)
    return m


def eager_reference(m: GDConv2d, x: torch.Tensor) -> torch.Tensor:
    """The layer's output recomputed from scratch: ``dense_weight()`` never touches the cache."""
    with torch.no_grad():
        return gd_conv2d_dense(x, m.dense_weight().to(x.dtype), m.bias, m.conv_spec)


def inputs(*shape: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)




# ============================================================================================ 1. cache vs writes
FUSED = {
    "adam-fused": lambda ps: torch.optim.Adam(ps, lr=0.05, fused=True),
    "adamw-fused": lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1, fused=True),
    "sgd-fused": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, fused=True),
}


@pytest.mark.parametrize("mode", ["eval", "train"])  # train: no-grad teacher / EMA targets
@pytest.mark.parametrize("make_opt", FUSED.values(), ids=FUSED.keys())
@pytest.mark.parametrize(("separated", "impl"), PATHS, ids=PATH_IDS)
def test_cache_follows_fused_optimizer_steps(
    generate_calls: list[str], separated: bool, impl: str, make_opt: Callable, mode: str
) -> None:
    """Fused optimizers update in place without bumping ``_version``; the no-grad output still follows."""
    m = make(separated, impl)
    m.train(mode == "train")
    x = inputs(2, 3, 8, 8)
    opt = make_opt(m.parameters())
    for _ in range(3):
        with torch.no_grad():
            before = m(x)
            m(x)  # warm: cached
        m(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        calls = len(generate_calls)
        with torch.no_grad():
            after, again = m(x), m(x)
        assert len(generate_calls) == calls + 1  # regenerated once, then reused
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, eager_reference(m, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(again, after, rtol=0, atol=0)


WRITES = {
    "data.copy_": lambda t: t.data.copy_(t.data + 0.1 * torch.randn_like(t)),
    "data[...]=": lambda t: t.data.__setitem__((0,), t.data[0] * 0.5 + 0.2),
    "data.mul_": lambda t: t.data.mul_(1.3),
    "no_grad add_": lambda t: t.add_(0.05),  # in-place under no_grad (bumps _version; still covered)
    "data=": lambda t: setattr(t, "data", t.data.clone() - 0.1),  # new storage through .data
}


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
@pytest.mark.parametrize("trainable", [("sigma", "mu", "theta"), (), ("theta",)], ids=["all", "none", "theta"])
@pytest.mark.parametrize(("separated", "impl"), PATHS, ids=PATH_IDS)
def test_cache_follows_direct_writes(separated: bool, impl: str, trainable: tuple, write: Callable) -> None:
    """Writes through ``.data`` (and in-place ops) to any kernel source, parameter or buffer, are seen."""
    m = make(separated, impl, trainable=trainable).eval()
    x = inputs(2, 3, 9, 9)
    sources = ["sigma_raw", "mu_raw", "theta_raw"] + (["weight_out", "weight_in"] if separated else ["weight"])
    for name in sources:
        with torch.no_grad():
            before = m(x)
            write(getattr(m, name))
            after = m(x)
        assert not torch.allclose(before, after), name
        torch.testing.assert_close(after, eager_reference(m, x), rtol=1e-5, atol=1e-5, msg=name)


def test_cache_follows_bias_and_sigma_min() -> None:
    """The bias is applied live; a changed ``sigma_min`` (a plain attribute) regenerates."""
    m = make().eval()
    x = inputs(1, 3, 8, 8)
    with torch.no_grad():
        m(x)
        m.bias.data.add_(1.0)
        torch.testing.assert_close(m(x), eager_reference(m, x), rtol=1e-5, atol=1e-5)
        m.sigma_min = 0.3
        torch.testing.assert_close(m(x), eager_reference(m, x), rtol=1e-5, atol=1e-5)


def test_cache_reused_when_nothing_changed(generate_calls: list[str]) -> None:
    """The value check does not defeat the cache: unchanged sources (even rewritten with equal values) reuse it."""
    m = make().eval()
    x = inputs(1, 3, 8, 8)
    with torch.no_grad():
        m(x)
        m.load_state_dict(copy.deepcopy(m.state_dict()))  # new values, bit-identical
        m.weight.data.copy_(m.weight.data.clone())
        for _ in range(3):
            m(x)
    assert len(generate_calls) == 1


def test_cache_across_inference_mode_and_no_grad() -> None:
    """Kernels cached under ``inference_mode`` serve ``no_grad`` calls and are refreshed after a write."""
    m = make().eval()
    x = inputs(1, 3, 8, 8)
    with torch.inference_mode():
        first = m(x)
    with torch.no_grad():
        torch.testing.assert_close(m(x), first, rtol=0, atol=0)
        m.theta_raw.data.add_(0.3)
    with torch.inference_mode():
        torch.testing.assert_close(m(x), eager_reference(m, x), rtol=1e-5, atol=1e-5)
    m(x).sum().backward()  # and training afterwards is unaffected
    assert m.theta_raw.grad is not None


def test_cache_with_nan_sources_stays_correct() -> None:
    """A NaN in a source compares equal bitwise: cached and fresh outputs agree (both NaN where expected)."""
    m = make().eval()
    x = inputs(1, 3, 8, 8)
    with torch.no_grad():
        m.weight.data[0, 0, 0] = float("nan")
        first, second = m(x), m(x)
    torch.testing.assert_close(second, first, rtol=0, atol=0, equal_nan=True)


# ============================================================================================ 4. capture
def test_jit_trace_after_warm_forward_follows_new_weights() -> None:
    """A trace made after a cached forward records kernel generation, not the cached kernels."""
    m = make(seed=0).eval()
    other = make(seed=5)
    x = inputs(1, 3, 8, 8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings
        m(x)
        m(x)
        traced = torch.jit.trace(m, x, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)  # plain ops only: serialisable
        m.load_state_dict(other.state_dict())
        want = eager_reference(m, x)
        torch.testing.assert_close(traced(x), want, rtol=1e-5, atol=1e-5)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
        loaded.load_state_dict(other.state_dict(), strict=False)  # a ScriptModule also lists orders_index
        torch.testing.assert_close(loaded(x), want, rtol=1e-5, atol=1e-5)


def test_torch_export_after_warm_forward_follows_new_weights() -> None:
    """``torch.export`` (not reparameterized) after a cached forward keeps the kernels a function of the weights."""
    m = make(seed=0).eval()
    other = make(seed=5)
    x = inputs(1, 3, 8, 8)
    with torch.no_grad():
        m(x)
        program = torch.export.export(m, (x,))
    exported = program.module()
    exported.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(exported(x), eager_reference(other, x), rtol=1e-5, atol=1e-5)


def test_torch_func_vmap_under_no_grad_uses_no_cache() -> None:
    """``vmap`` over stacked weights under ``no_grad``: one output per weight set, not the cached kernels."""
    m = make().eval()
    x = inputs(1, 3, 8, 8)
    weights = torch.stack([m.weight.detach() * s for s in (0.5, 1.0, 2.0)])
    with torch.no_grad():
        m(x)
        out = torch.func.vmap(lambda w: torch.func.functional_call(m, {"weight": w}, (x,)))(weights)
    for w, y in zip(weights, out):
        ref = copy.deepcopy(m)
        ref.weight.data.copy_(w)
        torch.testing.assert_close(y, eager_reference(ref, x), rtol=1e-5, atol=1e-5)


# ============================================================================================ 5. pickling
@pytest.mark.parametrize(("separated", "impl"), PATHS, ids=PATH_IDS)
def test_pickle_and_deepcopy_leave_the_cache_out(separated: bool, impl: str) -> None:
    m = GDConv2d(16, 16, 7, num_bases=2, separated=separated, impl=impl).eval()
    x = inputs(1, 16, 9, 9)

    def saved_size(module: nn.Module) -> int:
        buffer = io.BytesIO()
        torch.save(module, buffer)
        return len(buffer.getvalue())

    cold = saved_size(m)
    with torch.no_grad():
        want = m(x)
    assert m._cache is not None
    assert abs(saved_size(m) - cold) <= 16
    assert len(pickle.dumps(m)) == len(pickle.dumps(copy.deepcopy(m)))
    copied = copy.deepcopy(m)
    assert copied._cache is None and m._cache is not None  # the original keeps its cache
    restored = pickle.loads(pickle.dumps(m))
    assert restored._cache is None
    with torch.no_grad():
        torch.testing.assert_close(copied(x), want, rtol=0, atol=0)
        torch.testing.assert_close(restored(x), want, rtol=0, atol=0)
        copied.weight_out.data.mul_(2.0) if separated else copied.weight.data.mul_(2.0)
        torch.testing.assert_close(copied(x), eager_reference(copied, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m(x), want, rtol=0, atol=0)  # the copy shares nothing with the original


# ============================================================================================ 2. higher order
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


@pytest.mark.parametrize("which", [(True, True, True), (True, False, False), (False, True, False), (False, False, True)])
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


# ============================================================================================ 3. fixed init
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


# ============================================================================================ 6. buffers
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
    assert all(torch.equal(state[k], fresh[k]) for k in state if k.endswith("_raw")), "published rfnn_fmnist learned its geometry"


def _snapshot_compare(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return kernel_cache_module._Snapshot(a).matches(b)


def _one_read_compare(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    bits = kernel_cache_module._bits
    return kernel_cache_module._same_bits_one_read(tuple(bits(t) for t in a), tuple(bits(t) for t in b))


@pytest.mark.parametrize("compare", [_snapshot_compare, _one_read_compare], ids=["host-snapshot", "one-read"])
def test_value_comparison_is_bitwise(compare: Callable) -> None:
    """Both comparison paths (host; accelerators, run here on CPU tensors) see any one-bit change, in small
    tensors (torch.equal) and large ones (bytes)."""
    large = kernel_cache_module._BYTES_MIN_NUMEL + 7
    a = (torch.randn(5, 3), torch.randn(4, 2, dtype=F64), torch.randn(7).half(), torch.randn(large),
         torch.randn(large, dtype=F64).bfloat16())
    same = tuple(t.clone() for t in a)
    assert compare(a, same)
    for i in range(len(a)):
        for position in (0, 2, a[i].numel() - 1):
            changed = [t.clone() for t in a]
            bits = changed[i].view({2: torch.int16, 4: torch.int32, 8: torch.int64}[a[i].element_size()]).view(-1)
            bits[position] ^= 1  # the lowest mantissa bit of one element
            assert not compare(a, tuple(changed)), (i, position)
    for size in (3, large):
        zeros = (torch.zeros(size),)
        assert not compare(zeros, (-zeros[0],))  # -0.0 and 0.0 differ in bits
        nan = (torch.full((size,), float("nan")),)
        assert compare(nan, (nan[0].clone(),))  # same bits: no endless regeneration
    if compare is _snapshot_compare:
        assert not compare(a[:1], (a[0].reshape(3, 5),))  # same bits, other shape
        assert not compare(a[:1], (a[0].double(),))
