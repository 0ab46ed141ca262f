"""Correctness of ``DAUConv2d`` (DAU-ConvNet's layer) and ``dau_fmnist`` against independent references.

The reference is written here: every unit evaluated tap by tap with ``math.exp`` and normalised by its sum,
the filters summed unit by unit in Python loops, the convolution done by ``F.conv2d`` / ``nn.Conv2d``;
gradients by ``torch.autograd.gradcheck`` (finite differences).
"""

from __future__ import annotations

import copy
import math
import pickle
from typing import Any

import pytest
import timm
import torch
import torch.nn as nn

import gdzoo  # noqa: F401  (registers the models)
from gdzoo.layers import DAUConv2d, GDConv2d, no_weight_decay_names
from gdzoo.layers import dau_conv as dau_conv_module

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("single_thread")


def ref_unit(kh: int, kw: int, mu1: float, mu2: float, sigma: float) -> torch.Tensor:
    """One unit tap by tap: ``exp(−‖x − μ‖² / 2σ²)`` on the centred grid, divided by its sum; μ clamped inside."""
    mu1 = min(max(mu1, -(kw - 1) / 2), (kw - 1) / 2)
    mu2 = min(max(mu2, -(kh - 1) / 2), (kh - 1) / 2)
    g = torch.tensor(
        [[math.exp(-((c - (kw - 1) / 2 - mu1) ** 2 + (r - (kh - 1) / 2 - mu2) ** 2)
                   / (2 * sigma**2)) for c in range(kw)]
         for r in range(kh)],
        dtype=F64,
    )
    return g / g.sum()


def ref_dense_weight(m: DAUConv2d) -> torch.Tensor:
    """``W[f, s] = Σ_k w[f, s, k] · unit(μ[f, s, k], σ[f, s, k])`` with σ = sigma_min + softplus(raw), by loops."""
    kh, kw = m.kernel_size
    out = torch.zeros(m.out_channels, m.in_channels, kh, kw, dtype=F64)
    for f in range(m.out_channels):
        for s in range(m.in_channels):
            for k in range(m.units):
                sigma = m.sigma_min + math.log1p(math.exp(m.sigma_raw[f, s, k].item()))
                mu1, mu2 = (m.mu_raw[f, s, k, a].item() for a in range(2))
                out[f, s] += m.weight[f, s, k].item() * ref_unit(kh, kw, mu1, mu2, sigma)
    return out


def spread(m: DAUConv2d, mu_scale: float = 1.6) -> DAUConv2d:
    """Move the geometry off its init: σ per unit from 0.3 to ~2, some μ beyond the kernel (clamped)."""
    with torch.no_grad():
        m.sigma_raw.uniform_(-1.5, 1.5)
        m.mu_raw.mul_(mu_scale)
    return m


# ---------------------------------------------------------------------------------------------
# The kernels
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel_size", [7, (5, 7), (4, 3), 1])
def test_dense_weight_matches_loops(kernel_size: Any) -> None:
    torch.manual_seed(0)
    m = spread(DAUConv2d(2, 3, kernel_size, units=4)).double()
    assert torch.allclose(m.dense_weight(), ref_dense_weight(m), atol=1e-12, rtol=1e-10)


def test_units_sum_to_one_and_peak_at_their_centre() -> None:
    """Each unit sums to 1 on the grid; a unit centred on a tap peaks there; a small σ is a single tap."""
    torch.manual_seed(0)
    m = DAUConv2d(1, 2, 7, units=3).double()
    with torch.no_grad():
        m.mu_raw.copy_(torch.tensor([[-2.0, 1.0], [0.0, 0.0], [3.0, -3.0]], dtype=F64).expand_as(m.mu_raw))
        m.sigma_raw.fill_(0.0)
    units = m.units_kernels()
    assert torch.allclose(units.sum(dim=(-2, -1)), torch.ones(2, 1, 3, dtype=F64))
    peaks = [divmod(int(u.argmax()), 7) for u in units[0, 0]]  # (row, col)
    assert peaks == [(4, 1), (3, 3), (0, 6)]  # row = μ2 + 3, col = μ1 + 3
    with torch.no_grad():
        m.sigma_raw.fill_(-30.0)  # σ → sigma_min = 0.1: all the mass on the nearest tap
    assert m.units_kernels()[0, 0, 1, 3, 3].item() == pytest.approx(1.0, abs=1e-12)


def test_mu_is_clamped_inside_the_kernel() -> None:
    """μ beyond the grid acts as μ on its edge and gets no gradient; inside, μ is the parameter itself."""
    m = DAUConv2d(1, 1, (5, 7), units=2, bias=False).double()
    with torch.no_grad():
        m.mu_raw.copy_(torch.tensor([[[[10.0, -0.5], [1.0, -4.0]]]], dtype=F64))
    assert m.mu_limit == (3.0, 2.0)
    assert torch.equal(m.mu, torch.tensor([[[[3.0, -0.5], [1.0, -2.0]]]], dtype=F64))
    assert torch.allclose(m.units_kernels()[0, 0, 0], ref_unit(5, 7, 3.0, -0.5, m.sigma[0, 0, 0].item()))
    (m.dense_weight() * torch.randn(1, 1, 5, 7, dtype=F64)).sum().backward()
    grad = m.mu_raw.grad[0, 0]
    assert grad[0, 0] == 0 and grad[1, 1] == 0  # the clamped coordinates
    assert grad[0, 1] != 0 and grad[1, 0] != 0


# ---------------------------------------------------------------------------------------------
# The convolution
# ---------------------------------------------------------------------------------------------
CONV_ARGS = [
    dict(),
    dict(stride=2, padding=1),
    dict(padding="valid", dilation=2),
    dict(padding=(1, 2), padding_mode="reflect"),
    dict(padding="same", padding_mode="circular", bias=False),
]


@pytest.mark.parametrize("kwargs", CONV_ARGS)
def test_forward_matches_conv2d_with_loop_weight(kwargs: dict[str, Any]) -> None:
    """Output = ``nn.Conv2d`` (same arguments, 'same' → k//2 for odd k) holding the loop reference's kernel."""
    torch.manual_seed(0)
    m = spread(DAUConv2d(3, 4, 5, units=3, **kwargs)).double()
    with torch.no_grad():
        if m.bias is not None:
            m.bias.normal_()
        conv_kwargs = {k: v for k, v in kwargs.items() if k != "padding"}
        padding = kwargs.get("padding", "same")
        conv = nn.Conv2d(3, 4, 5, padding=padding, **conv_kwargs).double()
        conv.weight.copy_(ref_dense_weight(m))
        if m.bias is not None:
            conv.bias.copy_(m.bias)
        x = torch.randn(2, 3, 11, 13, dtype=F64)
        assert torch.allclose(m(x), conv(x), atol=1e-12)
        assert torch.allclose(m(x[0]), conv(x[0]), atol=1e-12)  # unbatched (C, H, W)


@pytest.mark.parametrize("sigma_trainable", [True, False])
def test_gradcheck_layer(sigma_trainable: bool) -> None:
    """Finite differences agree with autograd for the input and every parameter (μ kept off the clamp edges)."""
    torch.manual_seed(0)
    m = DAUConv2d(2, 3, (3, 5), units=2, stride=(1, 2), padding=1, sigma_trainable=sigma_trainable).double()
    with torch.no_grad():
        m.mu_raw.mul_(0.8)
        m.sigma_raw.uniform_(-1.0, 1.0)
        m.bias.normal_()
    x = torch.randn(1, 2, 5, 6, dtype=F64, requires_grad=True)
    params = [p for p in m.parameters()]
    names = [n for n, _ in m.named_parameters()]
    assert ("sigma_raw" in names) == sigma_trainable

    def run(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params))
    if sigma_trainable:  # second order once (double backward through the units), in gradcheck's fast mode
        assert torch.autograd.gradgradcheck(run, (x, *params), fast_mode=True)


def test_variance_preserving_init() -> None:
    """Away from the borders, white unit-variance input gives E[out²] = 2 (He), over many draws of the layer."""
    torch.manual_seed(0)
    x = torch.randn(16, 8, 24, 24)
    moments = []
    for _ in range(20):
        m = DAUConv2d(8, 16, 7, bias=False)
        with torch.no_grad():
            moments.append(m(x)[..., 3:-3, 3:-3].pow(2).mean().item())
    assert sum(moments) / len(moments) == pytest.approx(2.0, rel=0.1)


def test_init_ranges() -> None:
    torch.manual_seed(0)
    m = DAUConv2d(4, 6, (5, 7), units=10, sigma_init=0.7)
    assert torch.allclose(m.sigma, torch.full((6, 4, 10), 0.7), atol=1e-6)
    assert m.mu_raw[..., 0].abs().max() <= 3.0 and m.mu_raw[..., 1].abs().max() <= 2.0
    assert m.mu_raw[..., 0].abs().max() > 2.0  # spread over the whole kernel, not around the centre
    assert torch.count_nonzero(m.bias) == 0


# ---------------------------------------------------------------------------------------------
# Cache, export, state
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def dense_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = dau_conv_module.DAUConv2d.dense_weight

    def counting(self: DAUConv2d) -> torch.Tensor:
        calls.append(1)
        return original(self)

    monkeypatch.setattr(dau_conv_module.DAUConv2d, "dense_weight", counting)
    return calls


def test_cache_reused_and_invalidated(dense_calls: list[int]) -> None:
    """Under no_grad the kernel is generated once; an optimizer step, a .data write or load_state_dict regenerate."""
    torch.manual_seed(0)
    m = DAUConv2d(2, 3, 5, units=3)
    x = torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        y0 = m(x)
        assert torch.equal(m(x), y0) and len(dense_calls) == 1
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    m(x).sum().backward()
    opt.step()
    with torch.no_grad():
        y1 = m(x)
    assert not torch.allclose(y1, y0) and len(dense_calls) == 3  # the training forward, then a new cache
    state = copy.deepcopy(m.state_dict())
    m.sigma_raw.data.add_(0.3)  # no version bump through .data
    with torch.no_grad():
        assert not torch.allclose(m(x), y1)
        m.load_state_dict(state)
        assert torch.equal(m(x), y1)
    fresh = DAUConv2d(2, 3, 5, units=3)
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(fresh(x), y1, atol=1e-6)  # the recomputed kernel, not a stale one


def test_reparameterize_exact() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(spread(DAUConv2d(3, 4, 5, units=3, stride=2, padding=2, padding_mode="reflect")), nn.ReLU(),
                          spread(DAUConv2d(4, 2, 3, units=2, sigma_trainable=False, bias=False))).eval()
    x = torch.randn(2, 3, 15, 15)
    with torch.no_grad():
        before = model(x)
    fused = timm.utils.reparameterize_model(model)
    assert not any(isinstance(m, DAUConv2d) and list(m.parameters(recurse=False)) for m in fused.modules())
    assert not any(n.endswith("sigma_raw") for n, _ in fused.named_buffers())
    assert sum(isinstance(m, nn.Conv2d) for m in fused.modules()) == 2
    with torch.no_grad():
        assert torch.allclose(fused(x), before, atol=1e-5)


def test_fixed_sigma_is_a_buffer_with_the_same_keys() -> None:
    learned, fixed = DAUConv2d(2, 3, 5), DAUConv2d(2, 3, 5, sigma_trainable=False)
    assert list(learned.state_dict()) == list(fixed.state_dict()) == ["weight", "mu_raw", "sigma_raw", "bias"]
    assert "sigma_raw" in dict(fixed.named_buffers()) and "sigma_raw" not in dict(fixed.named_parameters())
    fixed.load_state_dict(learned.state_dict())
    assert torch.equal(fixed.sigma, learned.sigma)
    assert no_weight_decay_names(nn.Sequential(learned, fixed)) == {"0.mu_raw", "0.sigma_raw", "1.mu_raw"}
    assert "sigma_trainable=False" in repr(fixed) and "units=10" in repr(learned)


def test_pickle_and_deepcopy_leave_the_cache_out() -> None:
    m = DAUConv2d(2, 3, 5)
    with torch.no_grad():
        y = m(torch.ones(1, 2, 6, 6))
    assert m._cache is not None
    for twin in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert twin._cache is None
        with torch.no_grad():
            assert torch.equal(twin(torch.ones(1, 2, 6, 6)), y)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(units=0), "units must be a positive int, got 0"),
        (dict(units=2.5), "units must be a positive int, got 2.5"),
        (dict(kernel_size=0), "kernel_size must be a positive int"),
        (dict(padding="full"), "padding must be 'same', 'valid'"),
        (dict(stride=2, padding="same"), "padding='same' is not supported for strided"),
        (dict(padding_mode="mirror"), "padding_mode must be one of"),
        (dict(sigma_init=0.1), r"sigma_init must be a float > sigma_min \(0.1\), got 0.1"),
        (dict(sigma_init="wide"), "sigma_init must be a float"),
        (dict(sigma_min=0.01), "sigma_min must be a float >= 0.05.*got 0.01"),
        (dict(sigma_trainable="yes"), "sigma_trainable must be True or False, got 'yes'"),
        (dict(in_channels=0), "in_channels must be a positive int, got 0"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    args = dict(in_channels=2, out_channels=3, kernel_size=5) | kwargs
    with pytest.raises(ValueError, match=match):
        DAUConv2d(**args)


def test_bad_inputs() -> None:
    m = DAUConv2d(2, 3, 5)
    with pytest.raises(ValueError, match=r"expects 2 input channels, got 4 \(input shape \(1, 4, 8, 8\)\)"):
        m(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) or \(C, H, W\) input, got shape \(8, 8\)"):
        m(torch.randn(8, 8))


# ---------------------------------------------------------------------------------------------
# dau_fmnist
# ---------------------------------------------------------------------------------------------
def test_dau_fmnist_is_the_fmnist_topology_with_dau_layers() -> None:
    """Same modules, shapes and feature taps as gd_fmnist; every conv a 7×7 DAU layer, 10 units, σ learned per unit."""
    dau, ours = timm.create_model("dau_fmnist"), timm.create_model("gd_fmnist")
    layers = [m for m in dau.modules() if isinstance(m, DAUConv2d)]
    gd_layers = [m for m in ours.modules() if isinstance(m, GDConv2d)]
    assert len(layers) == 4 and not any(isinstance(m, (GDConv2d, nn.Conv2d)) for m in dau.modules())
    for layer, gd in zip(layers, gd_layers):
        assert (layer.in_channels, layer.out_channels, layer.kernel_size) == (gd.in_channels, gd.out_channels, (7, 7))
        assert layer.units == 10 and layer.sigma_trainable and layer.bias is None
        assert layer.sigma_raw.shape == layer.weight.shape == (layer.out_channels, layer.in_channels, 10)
    assert dau.feature_info == ours.feature_info
    no_conv = lambda m: {k: v.shape for k, v in m.state_dict().items() if ".conv." not in k}  # noqa: E731
    assert no_conv(dau) == no_conv(ours)
    # 4 per unit (w, μ1, μ2, σ) × 10 units × Σ in·out = 40 · 3600, plus 144 norm β and the 64→10 classifier
    trainable = sum(p.numel() for p in dau.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in dau.parameters()) == 40 * (16 + 16 * 32 + 32 * 32 + 32
                                                                          * 64) + 144 + 650 == 144_794
    assert {n for n in dau.no_weight_decay()} == {f"{m}.conv.{g}_raw" for m in ("stem", "stages.0", "stages.1",
                                                                                "stages.2")
                                                  for g in ("mu", "sigma")}
    with torch.no_grad():
        assert dau.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
