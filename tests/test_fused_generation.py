"""The fused Triton generator (``gdzoo::gd_basis``), run on CPU in Triton's interpreter (``TRITON_INTERPRET=1``).

Values and gradients are compared with the float64 reference of tests/_gd_reference.py (explicit Hermite series,
plain autograd: no code shared with gdzoo.kernels) and with the torch generator; GDConv2d end to end on every
path. The interpreter is slow (about a second per call of a few dozen kernels): the cases stay small.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import gdzoo
import gdzoo.layers.gd_conv as gd_conv_module
from gdzoo.kernels import derivative_orders, generator
from gdzoo.kernels.basis_fused import gaussian_derivative_basis_raw
from gdzoo.kernels.generator import get_generator, set_generator, triton_available, uses_triton

from _gd_reference import assert_close_scaled, reference_basis

pytestmark = [
    pytest.mark.skipif(not triton_available(), reason="triton is not installed (it ships with torch's Linux wheels)"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 from Python's start "
                       "(tests/conftest.py sets it when there is no CUDA)"),
]

F64 = torch.float64


@pytest.fixture(autouse=True)
def no_generator_choice(monkeypatch: pytest.MonkeyPatch, single_thread: None) -> Iterator[None]:
    """No generator choice comes in from the environment or is left over from a test."""
    monkeypatch.delenv("GDZOO_GENERATOR", raising=False)
    yield
    set_generator(None)


class OpCounter(TorchDispatchMode):
    """Counts the operators dispatched below autograd (a custom op counts once, whatever it runs inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _geometry(b: int, order: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    """Anisotropic, shifted, rotated geometry: raw scales around σ ≈ 0.6–2, shifts ±1, angles ±π."""
    gen = torch.Generator().manual_seed(seed)
    n = len(derivative_orders(order))
    raw = torch.empty(b, n, 2, dtype=F64).uniform_(-0.5, 1.8, generator=gen)
    mu = torch.empty(b, n, 2, dtype=F64).uniform_(-1, 1, generator=gen)
    theta = torch.empty(b, n, dtype=F64).uniform_(-math.pi, math.pi, generator=gen)
    return tuple(t.to(dtype).requires_grad_(True) for t in (raw, mu, theta))


def _basis_and_grads(name: str, raw, mu, theta, order, kernel_size, weights):
    orders = torch.tensor(derivative_orders(order))
    with generator(name):
        basis = gaussian_derivative_basis_raw(raw, mu, theta, orders, kernel_size, 0.1, order)
    return (basis, *torch.autograd.grad((basis * weights).sum(), (raw, mu, theta)))


CASES = [  # (order, kernel size): orders 0-4, sizes 1-31, odd, even and non-square
    (0, (1, 1)), (1, (2, 2)), (2, (3, 5)), (3, (7, 7)), (4, (6, 4)), (4, (9, 9)), (1, (31, 31)), (2, (1, 7)),
]


@pytest.mark.parametrize(("order", "kernel_size"), CASES)
def test_triton_basis_and_gradients_match_the_float64_reference(order: int, kernel_size: tuple[int, int]) -> None:
    raw, mu, theta = _geometry(2, order, F64, seed=order)
    weights = torch.randn(*theta.shape, *kernel_size, dtype=F64, generator=torch.Generator().manual_seed(1))
    got = _basis_and_grads("triton", raw, mu, theta, order, kernel_size, weights)
    expected = reference_basis(0.1 + F.softplus(raw), mu, theta, order, kernel_size)
    want = (expected, *torch.autograd.grad((expected * weights).sum(), (raw, mu, theta)))
    for a, e, what in zip(got, want, ("basis", "d/d sigma_raw", "d/d mu", "d/d theta")):
        assert_close_scaled(a, e, 1e-10, f"{what}, order {order}, {kernel_size}")


@pytest.mark.parametrize(("order", "kernel_size"), [(3, (7, 7)), (4, (6, 9)), (2, (31, 31))])
def test_triton_matches_the_torch_generator_in_float32(order: int, kernel_size: tuple[int, int]) -> None:
    raw, mu, theta = _geometry(2, order, torch.float32, seed=10 + order)
    weights = torch.randn(*theta.shape, *kernel_size, generator=torch.Generator().manual_seed(2))
    got = _basis_and_grads("triton", raw, mu, theta, order, kernel_size, weights)
    want = _basis_and_grads("torch", raw, mu, theta, order, kernel_size, weights)
    for a, e, what in zip(got, want, ("basis", "d/d sigma_raw", "d/d mu", "d/d theta")):
        assert a.dtype == torch.float32
        assert_close_scaled(a, e, 1e-5, what)


def test_large_and_small_raw_scales_keep_softplus_exact() -> None:
    """σ = σ_min + softplus(raw) in the kernel: raw far below 0 (σ → σ_min) and far above (σ ≈ raw)."""
    raw = torch.tensor([[[-30.0, 25.0], [-8.0, 3.0], [0.0, 18.0]]], dtype=F64, requires_grad=True)
    mu, theta = torch.zeros(1, 3, 2, dtype=F64, requires_grad=True), torch.zeros(1, 3, dtype=F64, requires_grad=True)
    weights = torch.randn(1, 3, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(3))
    got = _basis_and_grads("triton", raw, mu, theta, 1, (5, 5), weights)
    expected = reference_basis(0.1 + F.softplus(raw), mu, theta, 1, (5, 5))
    want = (expected, *torch.autograd.grad((expected * weights).sum(), (raw, mu, theta)))
    for a, e, what in zip(got, want, ("basis", "d/d sigma_raw", "d/d mu", "d/d theta")):
        assert_close_scaled(a, e, 1e-10, what)


LAYERS = {  # name: (GDConv2d kwargs, in_channels): every execution path, grouped, separated
    "dense": (dict(num_bases=2, order=3, impl="dense"), 3),
    "basis": (dict(num_bases=2, order=2, impl="basis"), 3),
    "factorized": (dict(num_bases=2, order=2, separated=True, impl="factorized"), 3),
    "separated-dense": (dict(num_bases=2, order=2, separated=True, impl="dense"), 3),
    "grouped": (dict(num_bases=2, order=2, groups=2), 4),
    "depthwise-shared": (dict(num_bases=1, order=1, groups=4, kernel_size=8), 4),
}


def _layer(name: str) -> gdzoo.GDConv2d:
    kwargs, cin = LAYERS[name]
    kwargs = {"kernel_size": 5, **kwargs}
    torch.manual_seed(0)
    return gdzoo.GDConv2d(cin, 4, **kwargs)


def _run(layer: gdzoo.GDConv2d, x: torch.Tensor, name: str, autocast: bool = False) -> tuple[torch.Tensor, dict]:
    layer.zero_grad(set_to_none=True)
    with generator(name), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    y.float().square().mean().backward()
    return y, {k: p.grad.clone() for k, p in layer.named_parameters()}


@pytest.mark.parametrize("name", LAYERS)
def test_gdconv2d_same_output_and_gradients_with_either_generator(name: str) -> None:
    layer = _layer(name)
    x = torch.randn(2, layer.in_channels, 9, 9, generator=torch.Generator().manual_seed(4))
    y_t, g_t = _run(layer, x, "triton")
    y_r, g_r = _run(layer, x, "torch")
    assert_close_scaled(y_t, y_r, 1e-5, f"{name}: output")
    assert g_t.keys() == g_r.keys() and {"sigma_raw", "mu_raw", "theta_raw"} <= g_t.keys()
    for key in g_t:
        assert_close_scaled(g_t[key], g_r[key], 1e-4, f"{name}: d/d {key}")


def test_gdconv2d_under_bf16_autocast_matches_the_torch_generator() -> None:
    layer = _layer("dense")
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(5))
    y_t, g_t = _run(layer, x, "triton", autocast=True)
    y_r, g_r = _run(layer, x, "torch", autocast=True)
    assert y_t.dtype == y_r.dtype == torch.bfloat16
    assert torch.equal(y_t, y_r)  # the fp32 bases agree to ~1e-7, far below one bf16 step
    for key in g_t:
        assert_close_scaled(g_t[key], g_r[key], 1e-2, f"d/d {key}")


def test_double_backward_is_exact_through_the_fused_op() -> None:
    """create_graph=True (Hessian-vector products) goes through the op's differentiable backward."""
    layer = _layer("dense").double()
    x = torch.randn(1, 3, 7, 7, dtype=F64, generator=torch.Generator().manual_seed(6))
    params = [layer.sigma_raw, layer.mu_raw, layer.theta_raw]
    v = [torch.randn_like(p) for p in params]
    hvps = {}
    for name in ("triton", "torch"):
        with generator(name):
            grads = torch.autograd.grad(layer(x).square().sum(), params, create_graph=True)
            hvps[name] = torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v)), params)
    for a, e, what in zip(hvps["triton"], hvps["torch"], ("sigma_raw", "mu_raw", "theta_raw")):
        assert_close_scaled(a, e, 1e-10, f"Hessian-vector product, {what}")


def test_fused_op_is_one_operator_forward_and_one_backward() -> None:
    layer = _layer("dense")
    x = torch.randn(2, 3, 9, 9)
    with generator("triton"), OpCounter() as counter:
        layer(x).sum().backward()
    assert counter.ops["gdzoo.gd_basis"] == 1 and counter.ops["gdzoo.gd_basis_backward"] == 1
    assert not any(op in counter.ops for op in ("aten.exp", "aten.gather", "aten.softplus", "aten.cos"))
    with generator("torch"), OpCounter() as counter:
        layer(x).sum().backward()
    assert "gdzoo.gd_basis" not in counter.ops and counter.ops["aten.exp"] >= 1


def test_torch_compile_fullgraph_uses_the_fused_op() -> None:
    layer = _layer("dense")
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(7))
    with generator("torch"):
        expected = layer(x)
    with generator("triton"):
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
        y = compiled(x)
        y.sum().backward()
    assert_close_scaled(y, expected, 1e-5, "compiled output")
    assert torch.isfinite(layer.sigma_raw.grad).all() and layer.sigma_raw.grad.abs().sum() > 0


def test_where_the_op_cannot_serve_the_torch_ops_give_the_same_values() -> None:
    """Forward-mode AD, torch.func transforms, torch.export and torch.jit.trace fall back (no gdzoo op in the graph)."""
    layer = _layer("dense").double()
    x = torch.randn(1, 3, 7, 7, dtype=F64, generator=torch.Generator().manual_seed(8))
    with generator("torch"):
        expected = layer(x)
        tangent = torch.func.jvp(lambda t: torch.func.functional_call(layer, {"theta_raw": t}, (x,)),
                                 (layer.theta_raw.detach(),), (torch.ones_like(layer.theta_raw),))[1]
    with generator("triton"):
        out, jvp = torch.func.jvp(lambda t: torch.func.functional_call(layer, {"theta_raw": t}, (x,)),
                                  (layer.theta_raw.detach(),), (torch.ones_like(layer.theta_raw),))
        assert_close_scaled(out, expected, 1e-12, "torch.func.jvp output")
        assert_close_scaled(jvp, tangent, 1e-10, "torch.func.jvp tangent")
        exported = torch.export.export(layer, (x,))
        assert not any("gdzoo" in str(node.target) for node in exported.graph.nodes)
        assert_close_scaled(exported.module()(x), expected, 1e-12, "torch.export")
        traced = torch.jit.trace(layer, (x,))
        assert_close_scaled(traced(x), expected, 1e-12, "torch.jit.trace")


def test_generator_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert get_generator() == "auto" and not uses_triton(cpu)  # auto: Triton on CUDA only
    monkeypatch.setenv("GDZOO_GENERATOR", "triton")
    assert get_generator() == "triton" and uses_triton(cpu)  # the interpreter runs it on CPU tensors
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="generator 'triton' cannot run here .tensors are on cpu.*TRITON_INTERPRET"):
        uses_triton(cpu)
    with pytest.raises(RuntimeError, match="cannot run here"):
        _layer("dense")(torch.randn(1, 3, 5, 5))
    set_generator("torch")  # Python's choice wins over the environment's
    assert get_generator() == "torch" and not uses_triton(cpu)
    with generator("auto"):
        assert get_generator() == "auto"
    assert get_generator() == "torch"
    set_generator(None)
    monkeypatch.setenv("GDZOO_GENERATOR", "cuda")
    with pytest.raises(ValueError, match=r"\$GDZOO_GENERATOR must be one of \('auto', 'triton', 'torch'\), got 'cuda'"):
        get_generator()
    with pytest.raises(ValueError, match="generator must be one of .* got 'fast'"):
        set_generator("fast")
    assert gdzoo.set_generator is set_generator and gdzoo.generator is generator


def test_without_a_host_compare_kernels_are_regenerated_each_call(monkeypatch: pytest.MonkeyPatch,
                                                                   generate_calls: list[str]) -> None:
    """On an accelerator with the fused generator the cache steps aside (its value check would sync the host):
    simulated here by taking the CPU off the devices the cache compares cheaply."""
    layer = _layer("dense").eval()
    x = torch.randn(1, 3, 7, 7)
    with torch.no_grad(), generator("triton"):
        first = layer(x)
        layer(x)
        assert len(generate_calls) == 1  # on the CPU the cache pays
        monkeypatch.setattr(gd_conv_module, "_HOST_DEVICES", ())
        layer(x)
        layer.weight.data.mul_(2)  # a write no version counter sees: regenerating sees it by construction
        second = layer(x)
    assert len(generate_calls) == 3
    assert_close_scaled(second, 2 * first - layer.bias.view(1, -1, 1, 1), 1e-5, "output after the .data write")


def test_sigma_min_reaches_float64_kernels_at_float64_precision() -> None:
    """Compiled Triton takes Python floats as float32: σ_min goes as a float32 pair that sums to σ_min in float64."""
    import numpy as np

    from gdzoo.kernels.basis_triton import _split

    for value in (0.1, 0.3, 1e-3, 2.0 / 3.0):
        hi, lo = _split(value)
        assert float(np.float32(hi)) == hi and float(np.float32(lo)) == lo
        assert abs((hi + lo) - value) <= 1e-14 * value  # 48 bits of 53
        assert abs(hi - value) > 1e-12 * value or hi == value  # float32 alone would not do
