"""Correctness of the ``GDConv2d`` layer against independent references.

References are written here: explicit Python loops for eqs. (2)–(4), ``nn.Conv2d`` for the
convolution semantics and shapes, the closed-form Hermite series for the kernels, and
``torch.autograd.gradcheck`` for every gradient.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from gdzoo import GDConv2d

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------------------------
# Independent references and helpers
# ---------------------------------------------------------------------------------------------
def ref_gd1(y: torch.Tensor, sigma: float, p: int) -> torch.Tensor:
    """``G_p(y; σ) = (-1/(√2σ))^p H_p(y/(√2σ)) G(y; σ)`` with the paper's explicit Hermite series."""
    t = y / (math.sqrt(2.0) * sigma)
    hermite = sum(
        (-1) ** i * math.factorial(p) / (math.factorial(i) * math.factorial(p - 2 * i)) * (2 * t) ** (p - 2 * i)
        for i in range(p // 2 + 1)
    )
    gauss = torch.exp(-(y**2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    return (-1.0 / (math.sqrt(2.0) * sigma)) ** p * hermite * gauss


def ref_orders(order: int) -> list[tuple[int, int]]:
    """(0,0), (0,1), (1,0), (0,2), (1,1), (2,0), …"""
    return [(p, n - p) for n in range(order + 1) for p in range(n + 1)]


def ref_basis(m: GDConv2d) -> torch.Tensor:
    """``(B, N, kH, kW)`` kernels of eq. (1) from the layer's σ, μ, θ, one tap loop per kernel."""
    kh, kw = m.kernel_size
    sigma, mu, theta = m.sigma.detach().double(), m.mu.detach().double(), m.theta.detach().double()
    out = torch.zeros(m.num_bases, m.num_kernels, kh, kw, dtype=F64)
    x1 = torch.tensor([[c - (kw - 1) / 2 for c in range(kw)] for _ in range(kh)], dtype=F64)
    x2 = torch.tensor([[r - (kh - 1) / 2 for _ in range(kw)] for r in range(kh)], dtype=F64)
    for b in range(m.num_bases):
        for n, (p, q) in enumerate(ref_orders(m.order)):
            c, s = math.cos(theta[b, n].item()), math.sin(theta[b, n].item())
            y1 = x1 * c + x2 * s - mu[b, n, 0].item()
            y2 = -x1 * s + x2 * c - mu[b, n, 1].item()
            out[b, n] = ref_gd1(y1, sigma[b, n, 0].item(), p) * ref_gd1(y2, sigma[b, n, 1].item(), q)
    return out


def loop_dense_weight(m: GDConv2d, phi: torch.Tensor | None = None) -> torch.Tensor:
    """Eqs. (2)/(3) or (4) with explicit loops over b, j, i, n: ``(out, in, kH, kW)``."""
    phi = ref_basis(m) if phi is None else phi
    per = m.out_channels // m.num_bases
    w = torch.zeros(m.out_channels, m.in_channels, *m.kernel_size, dtype=F64)
    for b in range(m.num_bases):
        for j in range(per):
            o = b * per + j
            for i in range(m.in_channels):
                for n in range(m.num_kernels):
                    if m.separated:
                        coef = m.weight_out[o, n].item() * m.weight_in[b, n, i].item()
                    else:
                        coef = m.weight[o, i, n].item()
                    w[o, i] += coef * phi[b, n]
    return w


def reference_conv(m: GDConv2d, weight: torch.Tensor, dtype: torch.dtype = F64) -> nn.Conv2d:
    """An ``nn.Conv2d`` with ``m``'s spatial arguments and the given weight (and ``m``'s bias)."""
    conv = nn.Conv2d(
        m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
        bias=m.bias is not None, padding_mode=m.padding_mode, dtype=dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        if m.bias is not None:
            conv.bias.copy_(m.bias)
    return conv


def randomize_bias(m: nn.Module) -> None:
    """Give every bias a non-zero value so that bias handling is exercised."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_()


def geometry_count(m: GDConv2d) -> int:
    """Trainable geometry per the formula: 2 per kernel for σ, 2 for μ, 1 for θ."""
    per_kernel = {"sigma": 2, "mu": 2, "theta": 1}
    return m.num_bases * m.num_kernels * sum(per_kernel[t] for t in set(m.trainable))


def trainable_count(m: nn.Module) -> int:
    """sum(p.numel() for p in m.parameters() if p.requires_grad)."""
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
# Kernels of the module and eqs. (2)–(4)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel_size", [5, 4, (3, 6)])
def test_module_basis_matches_reference(kernel_size: int | tuple[int, int]) -> None:
    """``basis()`` equals eq. (1) evaluated from ``.sigma/.mu/.theta`` with the explicit series."""
    torch.manual_seed(0)
    m = GDConv2d(2, 6, kernel_size, num_bases=3, order=3, dtype=F64)
    torch.testing.assert_close(m.basis(), ref_basis(m), rtol=1e-10, atol=1e-12)
    assert m.orders == ref_orders(3)
    assert m.sigma.shape == (3, 10, 2) and m.mu.shape == (3, 10, 2) and m.theta.shape == (3, 10)


@pytest.mark.parametrize("separated", [False, True])
@pytest.mark.parametrize("num_bases", [1, 2])
def test_dense_weight_matches_loops(separated: bool, num_bases: int) -> None:
    """``dense_weight()`` equals the loop-built W of eqs. (2)/(3) (ω) or (4) (λ·β)."""
    torch.manual_seed(1)
    m = GDConv2d(3, 4, (5, 4), num_bases=num_bases, order=2, separated=separated, dtype=F64)
    torch.testing.assert_close(m.dense_weight(), loop_dense_weight(m), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("separated", [False, True])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=5, padding="same"),
        dict(kernel_size=4, padding="same", padding_mode="reflect", dilation=2),
        dict(kernel_size=4, padding="same", padding_mode="reflect"),
        dict(kernel_size=(2, 5), padding="same", padding_mode="replicate", dilation=(3, 1)),
        dict(kernel_size=(3, 6), padding="same", padding_mode="circular"),
        dict(kernel_size=(3, 5), stride=2, padding=(1, 2), padding_mode="circular"),
        dict(kernel_size=3, padding="valid", padding_mode="replicate", dilation=(2, 1)),
    ],
)
def test_forward_matches_conv2d_with_loop_weight(separated: bool, kwargs: dict[str, Any]) -> None:
    """Forward equals ``nn.Conv2d`` (same arguments) carrying the loop-built weight, every impl."""
    torch.manual_seed(2)
    impls = ("dense", "factorized") if separated else ("dense", "basis")
    m = GDConv2d(3, 4, num_bases=2, order=2, separated=separated, dtype=F64, **kwargs)
    randomize_bias(m)
    x = torch.randn(2, 3, 11, 10, dtype=F64)
    ref = reference_conv(m, loop_dense_weight(m))(x)
    for impl in impls:
        m.impl = impl
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-12, msg=impl)


@pytest.mark.parametrize("num_bases", [1, 2, 4])
def test_separated_weight_count(num_bases: int) -> None:
    """Combination weights: in·N·out non-separated, B·N·in + N·out separated (eq. (4))."""
    cin, cout, order = 6, 8, 3
    n = (order + 1) * (order + 2) // 2
    dense = GDConv2d(cin, cout, 5, num_bases=num_bases, order=order)
    sep = GDConv2d(cin, cout, 5, num_bases=num_bases, order=order, separated=True)
    assert dense.weight.numel() == cin * n * cout
    assert sep.weight_in.numel() + sep.weight_out.numel() == num_bases * n * cin + n * cout
    assert not hasattr(sep, "weight") or sep.weight is None


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(trainable=()),
        dict(trainable=("sigma",)),
        dict(trainable="theta"),
        dict(trainable=("mu", "theta")),
        dict(num_bases=2, order=2, bias=False),
        dict(separated=True),
        dict(separated=True, num_bases=4, trainable=("sigma", "theta")),
        dict(separated=True, num_bases=2, order=0, trainable=(), bias=False),
        dict(order=5, trainable=("sigma", "mu")),
    ],
)
def test_trainable_parameter_count(kwargs: dict[str, Any]) -> None:
    """Trainable count = combination weights + 5 per kernel for the trainable groups + bias."""
    cin, cout = 3, 8
    m = GDConv2d(cin, cout, 5, **kwargs)
    b = kwargs.get("num_bases", 1)
    k = kwargs.get("order", 3)
    n = (k + 1) * (k + 2) // 2
    trainable = kwargs.get("trainable", ("sigma", "mu", "theta"))
    trainable = (trainable,) if isinstance(trainable, str) else trainable
    weights = (b * n * cin + n * cout) if kwargs.get("separated") else cin * n * cout
    geometry = b * n * (2 * ("sigma" in trainable) + 2 * ("mu" in trainable) + ("theta" in trainable))
    bias = cout if kwargs.get("bias", True) else 0
    assert trainable_count(m) == weights + geometry + bias
    assert geometry == geometry_count(m)
    if set(trainable) == {"sigma", "mu", "theta"}:
        assert geometry == 5 * b * n


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "separated, impl", [(False, "dense"), (False, "basis"), (True, "dense"), (True, "factorized")]
)
@pytest.mark.parametrize(
    "kwargs",
    [dict(kernel_size=3), dict(kernel_size=(2, 3), stride=2, padding=1, padding_mode="reflect", dilation=(1, 2))],
)
def test_gradcheck_layer(separated: bool, impl: str, kwargs: dict[str, Any]) -> None:
    """gradcheck (float64) of the output w.r.t. input, σ/μ/θ raw, combination weights and bias."""
    torch.manual_seed(3)
    m = GDConv2d(2, 2, num_bases=2, order=1, separated=separated, impl=impl, dtype=F64, **kwargs)
    names = [name for name, p in m.named_parameters() if p.requires_grad]
    expected = {"sigma_raw", "mu_raw", "theta_raw", "bias"} | (
        {"weight_out", "weight_in"} if separated else {"weight"}
    )
    assert set(names) == expected
    randomize_bias(m)  # before the clone: gradcheck must see a non-zero bias
    params = [p.detach().clone().requires_grad_(True) for _, p in m.named_parameters()]
    assert params[names.index("bias")].abs().min() > 0
    x = torch.randn(1, 2, 5, 5, dtype=F64, requires_grad=True)

    def fn(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6)


def test_gradcheck_frozen_geometry() -> None:
    """With trainable=() only weights and bias get gradients, and they pass gradcheck."""
    torch.manual_seed(4)
    m = GDConv2d(2, 2, 3, order=2, trainable=(), dtype=F64)
    x = torch.randn(1, 2, 4, 4, dtype=F64, requires_grad=True)
    m(x).sum().backward()
    assert m.sigma_raw.grad is None and m.mu_raw.grad is None and m.theta_raw.grad is None
    w = m.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, w: torch.func.functional_call(m, {"weight": w}, (x,)), (x, w))


# ---------------------------------------------------------------------------------------------
# All execution paths agree
# ---------------------------------------------------------------------------------------------
PATH_CONFIGS = [
    dict(kernel_size=5, padding="same", num_bases=1),
    dict(kernel_size=4, padding="same", padding_mode="reflect", num_bases=2),
    dict(kernel_size=(3, 5), padding="valid", padding_mode="replicate", dilation=2, num_bases=2),
    dict(kernel_size=(4, 3), stride=2, padding=1, padding_mode="circular", num_bases=1),
    dict(kernel_size=3, stride=(2, 1), padding=(2, 0), dilation=(1, 2), num_bases=3),
    dict(kernel_size=6, padding="same", padding_mode="circular", dilation=2, num_bases=3),
    dict(kernel_size=(2, 5), stride=3, padding="valid", padding_mode="reflect", num_bases=1),
    dict(kernel_size=1, padding=0, num_bases=2, order=2),
]


@pytest.mark.parametrize("separated", [False, True])
@pytest.mark.parametrize("kwargs", PATH_CONFIGS)
def test_impl_paths_equal(separated: bool, kwargs: dict[str, Any]) -> None:
    """Outputs and all gradients (input and every parameter) agree across the valid impls."""
    impls = ("dense", "factorized") if separated else ("dense", "basis")
    kwargs = {"order": 2, **kwargs}
    torch.manual_seed(5)
    first = GDConv2d(3, 6, separated=separated, impl=impls[0], dtype=F64, **kwargs)
    randomize_bias(first)
    x = torch.randn(2, 3, 12, 11, dtype=F64)
    results = []
    for impl in impls:
        m = GDConv2d(3, 6, separated=separated, impl=impl, dtype=F64, **kwargs)
        m.load_state_dict(first.state_dict())
        assert m.select_impl() == impl
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        upstream = torch.linspace(-1, 1, y.numel(), dtype=F64).view_as(y)
        (y * upstream).sum().backward()
        grads = {name: p.grad.clone() for name, p in m.named_parameters()}
        results.append((y.detach(), xi.grad.clone(), grads))
    (y0, gx0, g0), (y1, gx1, g1) = results
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(gx1, gx0, rtol=1e-10, atol=1e-11)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("separated", [False, True])
def test_auto_impl_is_a_valid_path(separated: bool) -> None:
    """``impl='auto'`` selects one of the paths valid for the mode and matches the dense path."""
    torch.manual_seed(6)
    m = GDConv2d(4, 8, 7, num_bases=2, separated=separated, dtype=F64)
    assert m.select_impl() in (("dense", "factorized") if separated else ("dense", "basis"))
    x = torch.randn(1, 4, 9, 9, dtype=F64)
    ref = reference_conv(m, loop_dense_weight(m))(x)
    torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-11)


# ---------------------------------------------------------------------------------------------
# Shapes vs nn.Conv2d
# ---------------------------------------------------------------------------------------------
@st.composite
def conv_args(draw: st.DrawFn) -> dict[str, Any]:
    """Random but valid ``nn.Conv2d`` arguments plus GD options and an input size."""
    num_bases = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    options = ["valid", "int", "pair"] + (["same"] if stride == (1, 1) else [])
    kind = draw(st.sampled_from(options))
    if kind == "int":
        padding: Any = draw(st.integers(0, 3))
    elif kind == "pair":
        padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    else:
        padding = kind
    pads = {"valid": (0, 0), "same": (0, 0)}.get(kind, (padding, padding) if kind == "int" else padding)
    padding_mode = draw(st.sampled_from(("zeros", "reflect", "replicate", "circular")))
    extent = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    low = [max(1, e - 2 * p) for e, p in zip(extent, pads)]
    if padding_mode != "zeros":  # reflect / circular need every pad amount < the input size
        widest = [d * (k - 1) if kind == "same" else p for d, k, p in zip(dilation, kernel, pads)]
        low = [max(lo, wd + 1) for lo, wd in zip(low, widest)]
    h = draw(st.integers(low[0], max(low[0], 12)))
    w = draw(st.integers(low[1], max(low[1], 12)))
    separated = draw(st.booleans())
    return dict(
        in_channels=draw(st.integers(1, 4)),
        out_channels=num_bases * draw(st.integers(1, 3)),
        kernel_size=kernel if draw(st.booleans()) or kernel[0] != kernel[1] else kernel[0],
        stride=stride,
        padding=padding,
        dilation=dilation,
        padding_mode=padding_mode,
        num_bases=num_bases,
        order=draw(st.integers(0, 2)),
        separated=separated,
        impl=draw(st.sampled_from(("auto", "dense", "factorized" if separated else "basis"))),
        size=(h, w),
        batch=draw(st.integers(1, 2)),
    )


@settings(max_examples=40, deadline=None, database=None, derandomize=True)
@given(conv_args())
def test_output_shape_matches_nn_conv2d(args: dict[str, Any]) -> None:
    """Batched and unbatched output shapes (and values) equal ``nn.Conv2d`` with the same arguments."""
    args = dict(args)
    size, batch = args.pop("size"), args.pop("batch")
    conv_keys = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "padding_mode")
    conv_kwargs = {k: args[k] for k in conv_keys}
    m = GDConv2d(**args, dtype=F64)
    conv = nn.Conv2d(**conv_kwargs, dtype=F64)
    with torch.no_grad():
        conv.weight.copy_(m.dense_weight())
        conv.bias.copy_(torch.randn_like(conv.bias))
        m.bias.copy_(conv.bias)
    x = torch.randn(batch, args["in_channels"], *size, dtype=F64)
    y = m(x)
    assert y.shape == conv(x).shape
    torch.testing.assert_close(y, conv(x), rtol=1e-9, atol=1e-10)
    y3 = m(x[0])
    assert y3.shape == conv(x[0]).shape
    torch.testing.assert_close(y3, y[0], rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Kernel cache
# ---------------------------------------------------------------------------------------------


def fresh(m: GDConv2d, x: torch.Tensor) -> torch.Tensor:
    """The layer's output recomputed from scratch (loop-built weight through ``nn.Conv2d``)."""
    return reference_conv(m, loop_dense_weight(m), dtype=x.dtype)(x).detach()


@pytest.mark.parametrize(
    "separated, impl", [(False, "dense"), (False, "basis"), (True, "dense"), (True, "factorized")]
)
def test_cache_reused_under_no_grad(generate_calls: list[str], separated: bool, impl: str) -> None:
    """Under no_grad / inference_mode kernels are generated once and reused (same objects)."""
    m = GDConv2d(3, 4, 5, num_bases=2, order=2, separated=separated, impl=impl).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        y1 = m(x)
        y2 = m(x)
        k1, k2 = m._kernels(impl), m._kernels(impl)
    assert generate_calls == [impl]
    assert all(a is b for a, b in zip(k1, k2))
    assert k1[-1].grad_fn is None  # the generated kernel holds no autograd graph
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    with torch.inference_mode():
        m(x)
    assert len(generate_calls) == 1
    m(x)  # grad enabled: always regenerated, so that gradients flow
    m(x)
    assert len(generate_calls) == 3


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, foreach=True),
        lambda ps: torch.optim.Adam(ps, lr=0.05),
    ],
    ids=["sgd", "sgd-foreach", "adam"],
)
@pytest.mark.parametrize("separated", [False, True])
def test_cache_invalidated_by_optimizer_step(generate_calls: list[str], make_opt: Any, separated: bool) -> None:
    """After an optimizer step the no_grad output is regenerated and equals a fresh recompute."""
    torch.manual_seed(7)
    m = GDConv2d(3, 4, 5, num_bases=2, order=2, separated=separated)
    x = torch.randn(2, 3, 8, 8)
    opt = make_opt(m.parameters())
    for _ in range(2):
        with torch.no_grad():
            before = m(x)
        n_calls = len(generate_calls)
        m(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            after = m(x)
        assert len(generate_calls) == n_calls + 2  # one with grad, one refreshed cache
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, fresh(m, x).float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["sigma_raw", "mu_raw", "theta_raw"])
def test_cache_invalidated_by_geometry_only_step(generate_calls: list[str], name: str) -> None:
    """A step on a single geometry parameter (weights untouched) still refreshes the cache."""
    torch.manual_seed(8)
    m = GDConv2d(2, 2, 5, order=2, dtype=F64)
    x = torch.randn(1, 2, 7, 7, dtype=F64)
    opt = torch.optim.SGD([getattr(m, name)], lr=0.5)
    with torch.no_grad():
        m(x)
    m(x).square().sum().backward()
    opt.step()
    with torch.no_grad():
        torch.testing.assert_close(m(x), fresh(m, x), rtol=1e-10, atol=1e-12)


def test_cache_invalidated_by_load_state_dict(generate_calls: list[str]) -> None:
    """load_state_dict of other parameters refreshes the cached kernels."""
    torch.manual_seed(9)
    a = GDConv2d(3, 4, 5, order=2).eval()
    b = GDConv2d(3, 4, 5, order=2).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        a(x)
        a.load_state_dict(b.state_dict())
        calls = len(generate_calls)
        y = a(x)
        assert len(generate_calls) == calls + 1
        torch.testing.assert_close(y, b(x), rtol=0, atol=0)


def test_cache_invalidated_by_train_and_eval(generate_calls: list[str]) -> None:
    """``.train()`` and ``.eval()`` drop the cache."""
    m = GDConv2d(3, 4, 5, order=1).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        m(x)
        m.train()
        m(x)
        m.eval()
        m(x)
        m(x)
    assert len(generate_calls) == 3


def test_cache_invalidated_by_dtype_change(generate_calls: list[str]) -> None:
    """``.to(float64)`` refreshes the cache: float64 output equal to a float64 recompute."""
    torch.manual_seed(10)
    m = GDConv2d(3, 4, 5, order=2).eval()
    x = torch.randn(1, 3, 8, 8, dtype=F64)
    with torch.no_grad():
        m(x.float())
        m.to(F64)
        y = m(x)
    assert len(generate_calls) == 2
    assert y.dtype == F64
    torch.testing.assert_close(y, fresh(m, x), rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# reparameterize()
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(separated=False),
        dict(separated=False, num_bases=2, kernel_size=4, padding_mode="reflect", dilation=2),
        dict(separated=True, impl="factorized", num_bases=2),
        dict(separated=True, impl="dense"),
        dict(separated=True, impl="factorized", kernel_size=(4, 3), stride=2, padding=1, padding_mode="circular"),
        dict(separated=False, bias=False, padding="valid"),
    ],
)
def test_reparameterize_exact(kwargs: dict[str, Any]) -> None:
    """Same output before/after; the state dict holds only plain ``nn.Conv2d`` parameters."""
    torch.manual_seed(11)
    kwargs = {"kernel_size": 5, **kwargs}
    m = GDConv2d(3, 4, order=2, dtype=F64, **kwargs).eval()
    randomize_bias(m)
    x = torch.randn(2, 3, 10, 9, dtype=F64)
    with torch.no_grad():
        before = m(x)
        m.reparameterize()
        after = m(x)
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-12)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert convs
    conv_params = {id(p) for c in convs for p in c.parameters()}
    assert all(id(p) in conv_params for p in m.parameters())
    for key in m.state_dict():
        assert key.startswith("reparam_conv.")
        assert key.rsplit(".", 1)[-1] in ("weight", "bias")
    assert not any(name in key for key in m.state_dict() for name in ("sigma", "mu", "theta", "weight_in"))
    if kwargs.get("separated") and kwargs.get("impl") == "factorized":
        assert len(convs) == 3
    else:
        assert len(convs) == 1


def test_reparameterize_via_timm() -> None:
    """``timm.utils.model.reparameterize_model`` on a small Sequential keeps the output."""
    from timm.utils.model import reparameterize_model

    torch.manual_seed(12)
    net = nn.Sequential(
        GDConv2d(3, 4, 5, order=2),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        GDConv2d(4, 8, 3, num_bases=2, separated=True, impl="factorized", stride=2, padding=1),
    ).eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        before = net(x)
        fused = reparameterize_model(net)
        after = fused(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(mod, GDConv2d) and not hasattr(mod, "reparam_conv") for mod in fused.modules())
    assert not any("sigma_raw" in key for key in fused.state_dict())
    assert any("sigma_raw" in key for key in net.state_dict())  # not in place by default


# ---------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------
def test_random_init_ranges() -> None:
    """init='random': σ in [0.5, 2], μ in [-1, 1], θ in [-π, π], and actually spread out."""
    torch.manual_seed(13)
    m = GDConv2d(2, 8, 5, num_bases=8, order=4)
    sigma, mu, theta = m.sigma.detach(), m.mu.detach(), m.theta.detach()
    assert (sigma >= 0.5 - 1e-5).all() and (sigma <= 2.0 + 1e-5).all()
    assert (mu >= -1).all() and (mu <= 1).all()
    assert (theta >= -math.pi).all() and (theta <= math.pi).all()
    assert sigma.std() > 0.2 and mu.std() > 0.3 and theta.std() > 1.0


@pytest.mark.parametrize(
    "sigma_init, mu_init, theta_init", [(1.5, 0.0, 0.0), ((0.8, 2.5), (0.3, -0.7), 0.4), (3.0, -1.5, -2.0)]
)
def test_fixed_init_values(sigma_init: Any, mu_init: Any, theta_init: float) -> None:
    """init='fixed' gives every kernel exactly the requested σ, μ (float or pair) and θ."""
    m = GDConv2d(2, 4, 5, num_bases=2, order=2, init="fixed", sigma_init=sigma_init, mu_init=mu_init,
                 theta_init=theta_init, dtype=F64)
    s = sigma_init if isinstance(sigma_init, tuple) else (sigma_init, sigma_init)
    mu = mu_init if isinstance(mu_init, tuple) else (mu_init, mu_init)
    torch.testing.assert_close(m.sigma.detach(), torch.tensor(s, dtype=F64).expand(2, 6, 2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.mu.detach(), torch.tensor(mu, dtype=F64).expand(2, 6, 2), rtol=0, atol=0)
    torch.testing.assert_close(m.theta.detach(), torch.full((2, 6), theta_init, dtype=F64), rtol=0, atol=0)


def test_sigma_stays_above_min_after_big_step() -> None:
    """A huge gradient step pushing σ down leaves σ ≥ sigma_min and the output finite."""
    m = GDConv2d(2, 4, 5, order=2, sigma_min=0.2)
    x = torch.randn(1, 2, 8, 8)
    opt = torch.optim.SGD([m.sigma_raw], lr=1e6)
    m.sigma.sum().backward()
    opt.step()
    assert (m.sigma_raw < -1e3).all()
    assert (m.sigma >= 0.2).all() and torch.isfinite(m.sigma).all()
    y = m(x)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(m.sigma_raw.grad).all()


def test_sigma_reparameterisation_smooth() -> None:
    """Moderately pushed down, σ is strictly above sigma_min with non-zero gradient (no hard clip)."""
    m = GDConv2d(2, 4, 5, order=2, sigma_min=0.3, dtype=F64)
    with torch.no_grad():
        m.sigma_raw.fill_(-8.0)
    assert (m.sigma > 0.3).all()
    m.sigma.sum().backward()
    assert (m.sigma_raw.grad > 0).all()


@pytest.mark.parametrize("separated", [False, True])
def test_variance_preserving_init(separated: bool) -> None:
    """White unit-variance input, large kernel, 'valid' padding: E[out²] ≈ gain² = 2.

    Averaged over 8 random inits (random geometry too), whose spread is ~0.04 (dense) and ~0.08
    (separated: the λ-mixed maps share β and correlated kernels) around 2.
    """
    torch.manual_seed(14)
    m = GDConv2d(32, 32, 9, num_bases=2, order=3, padding="valid", separated=separated)
    x = torch.randn(2, 32, 20, 20)
    moments = []
    with torch.no_grad():
        for _ in range(8):
            m.reset_parameters()
            moments.append(m(x).square().mean().item())
    second_moment = sum(moments) / len(moments)
    assert abs(second_moment - 2.0) < 0.3, moments


# ---------------------------------------------------------------------------------------------
# Bad arguments
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(out_channels=6, num_bases=4), "num_bases"),
        (dict(order=-1), "order"),
        (dict(kernel_size=0), "kernel_size"),
        (dict(kernel_size=(3, 0)), "kernel_size"),
        (dict(init="fixed", sigma_init=0.05), "sigma_init"),
        (dict(init="fixed", sigma_init=0.1, sigma_min=0.1), "sigma_init"),
        (dict(init="fixed", sigma_init=-1.0), "sigma_init"),
        (dict(init="fixed", sigma_init=(1.0, 0.0)), "sigma_init"),
        (dict(init="random", sigma_init=-1.0), "sigma_init"),
        (dict(init="random", sigma_init=(0.0, 1.0)), "sigma_init"),
        (dict(sigma_init=(1.0, 2.0, 3.0)), "sigma_init"),
        (dict(mu_init="zero"), "mu_init"),
        (dict(sigma_min=0.0), "sigma_min"),
        (dict(sigma_min=-0.5), "sigma_min"),
        (dict(sigma_min=0.7), "sigma_min"),
        (dict(padding="full"), "padding"),
        (dict(padding=-1), "padding"),
        (dict(padding="same", stride=2), "padding"),
        (dict(padding_mode="mirror"), "padding_mode"),
        (dict(trainable=("sigma", "scale")), "trainable"),
        (dict(impl="winograd"), "impl"),
        (dict(impl="basis", separated=True), "impl"),
        (dict(impl="factorized", separated=False), "impl"),
        (dict(init="kaiming"), "init"),
        (dict(in_channels=0), "in_channels"),
        (dict(num_bases=0), "num_bases"),
        (dict(stride=0), "stride"),
        (dict(dilation=(1, 0)), "dilation"),
        (dict(padding=(1, 2, 3)), "padding"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    """Each bad argument raises ValueError naming it."""
    args = dict(in_channels=3, out_channels=4, kernel_size=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GDConv2d(**args)


def test_bad_inputs() -> None:
    """Wrong channel count or rank in forward raise a ValueError that says so."""
    m = GDConv2d(3, 4, 3)
    with pytest.raises(ValueError, match="input channels"):
        m(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="input channels"):
        m(torch.randn(5, 8, 8))
    for shape in [(8, 8), (1, 1, 3, 8, 8)]:
        with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
            m(torch.randn(*shape))


def test_deepcopy_and_state_dict_roundtrip() -> None:
    """A deep copy and a state-dict round trip reproduce the output exactly."""
    torch.manual_seed(15)
    m = GDConv2d(3, 4, 5, num_bases=2, order=2, separated=True).eval()
    x = torch.randn(1, 3, 8, 8)
    other = GDConv2d(3, 4, 5, num_bases=2, order=2, separated=True).eval()
    other.load_state_dict(m.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(m)(x), m(x), rtol=0, atol=0)
        torch.testing.assert_close(other(x), m(x), rtol=0, atol=0)
    assert set(m.state_dict()) == {"sigma_raw", "mu_raw", "theta_raw", "weight_out", "weight_in", "bias"}
