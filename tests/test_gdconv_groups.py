"""``GDConv2d(groups=g)``: grouped and depthwise Gaussian-derivative convolutions (issue #21).

References written here and independent of the layer: the kernels from the paper's explicit Hermite series
(``tests/_gd_reference.py``), the combination from explicit loops over (output, local input, kernel), and the
grouping from a *block-diagonal* ``(out, in, kH, kW)`` weight run through an ungrouped ``F.conv2d`` (so the
reference never uses ``groups``); ``nn.Conv2d(groups=g)`` then checks the layout of ``dense_weight()``.
Gradients against ``torch.autograd.gradcheck``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gdzoo import GDConv2d, gdify
from gdzoo.layers.fit import fit_gdconv_
from gdzoo.layers.fit_kernel import _projection_residual, _target_moment
from gdzoo.layers.gdify import conv_to_gd
from gdzoo.layers.steer import steer_gdconv

from _gd_reference import gaussian_derivative, reference_basis

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")

# (in, out, groups, num_bases): bases per group (B multiple of g), shared by groups (g multiple of B),
# depthwise with one basis per channel, depthwise sharing one basis, depthwise with channel multiplier 2.
CONFIGS = [(4, 6, 2, 2), (4, 8, 2, 4), (6, 6, 3, 1), (6, 6, 6, 6), (6, 6, 6, 1), (3, 6, 3, 3), (6, 12, 6, 2)]
CONFIG_IDS = [f"in{i}-out{o}-g{g}-B{b}" for i, o, g, b in CONFIGS]


def loop_dense_weight(m: GDConv2d) -> torch.Tensor:
    """``(out, in/g, kH, kW)`` with explicit loops: output ``o`` uses basis ``o // (out/B)``, eqs. (2)–(4)."""
    phi = reference_basis(m.sigma.detach().double(), m.mu.detach().double(), m.theta.detach().double(), m.order,
                          m.kernel_size)
    per_basis = m.out_channels // m.num_bases
    cin_g = m.in_channels // m.groups
    w = torch.zeros(m.out_channels, cin_g, *m.kernel_size, dtype=F64)
    for o in range(m.out_channels):
        b = o // per_basis
        for i in range(cin_g):
            for n in range(m.num_kernels):
                if m.separated:
                    coef = m.weight_out[o, n].item() * m.weight_in[b, n, i].item()
                else:
                    coef = m.weight[o, i, n].item()
                w[o, i] += coef * phi[b, n]
    return w


def block_diagonal(weight: torch.Tensor, groups: int, in_channels: int) -> torch.Tensor:
    """The ``(out, in, kH, kW)`` weight of an ungrouped conv equal to the grouped one: zeros across groups."""
    out, cin_g = weight.shape[:2]
    full = torch.zeros(out, in_channels, *weight.shape[2:], dtype=weight.dtype)
    out_g = out // groups
    for o in range(out):
        g = o // out_g
        full[o, g * cin_g:(g + 1) * cin_g] = weight[o]
    return full


def reference_forward(m: GDConv2d, x: torch.Tensor) -> torch.Tensor:
    """Ungrouped float64 convolution with the block-diagonal loop weight (and the layer's spatial arguments)."""
    full = block_diagonal(loop_dense_weight(m), m.groups, m.in_channels)
    bias = None if m.bias is None else m.bias.detach().double()
    if m.padding_mode != "zeros":
        x = F.pad(x, m.conv_spec.explicit_padding(), mode=m.padding_mode)
        return F.conv2d(x, full, bias, m.stride, 0, m.dilation)
    return F.conv2d(x, full, bias, m.stride, m.padding, m.dilation)


def make(cin: int, cout: int, groups: int, num_bases: int, separated: bool, seed: int = 0, **kwargs: Any) -> GDConv2d:
    torch.manual_seed(seed)
    m = GDConv2d(cin, cout, kwargs.pop("kernel_size", 5), groups=groups, num_bases=num_bases, order=2,
                 separated=separated, dtype=F64, **kwargs)
    with torch.no_grad():
        if m.bias is not None:
            m.bias.normal_()
    return m


# ------------------------------------------------------------------------------------------ values
@pytest.mark.parametrize("separated", [False, True], ids=["nonsep", "sep"])
@pytest.mark.parametrize("cin, cout, groups, num_bases", CONFIGS, ids=CONFIG_IDS)
def test_dense_weight_matches_loops(cin: int, cout: int, groups: int, num_bases: int, separated: bool) -> None:
    m = make(cin, cout, groups, num_bases, separated)
    assert m.dense_weight().shape == (cout, cin // groups, 5, 5)
    torch.testing.assert_close(m.dense_weight(), loop_dense_weight(m), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("separated", [False, True], ids=["nonsep", "sep"])
@pytest.mark.parametrize("cin, cout, groups, num_bases", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("spatial", [
    dict(kernel_size=5),
    dict(kernel_size=(4, 3), stride=2, padding=(1, 2), padding_mode="reflect"),
    dict(kernel_size=3, dilation=2, padding="same", padding_mode="circular", bias=False),
], ids=["same", "strided-reflect", "dilated-circular"])
def test_every_path_matches_block_diagonal_reference(
    cin: int, cout: int, groups: int, num_bases: int, separated: bool, spatial: dict[str, Any]
) -> None:
    """Every execution path equals an ungrouped conv with the block-diagonal weight, and nn.Conv2d(groups=g)."""
    m = make(cin, cout, groups, num_bases, separated, **dict(spatial))
    x = torch.randn(2, cin, 11, 10, dtype=F64)
    want = reference_forward(m, x)
    conv = nn.Conv2d(cin, cout, m.kernel_size, m.stride, m.padding, m.dilation, groups=groups,
                     bias=m.bias is not None, padding_mode=m.padding_mode, dtype=F64)
    with torch.no_grad():
        conv.weight.copy_(loop_dense_weight(m))
        if m.bias is not None:
            conv.bias.copy_(m.bias)
        torch.testing.assert_close(conv(x), want, rtol=1e-10, atol=1e-12)  # the layout is nn.Conv2d's
    for impl in ("dense", "factorized") if separated else ("dense", "basis"):
        m.impl = impl
        torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-12, msg=impl)
        with torch.no_grad():  # the cached kernels give the same
            torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-12, msg=f"{impl} cached")
            torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-12, msg=f"{impl} cached twice")


def test_groups_one_keeps_the_state_dict() -> None:
    """groups=1 (the default) keeps the published keys and shapes: weight (out, in, N), weight_in (B, N, in)."""
    plain = GDConv2d(3, 8, 5, num_bases=2, order=2)
    assert {k: tuple(v.shape) for k, v in plain.state_dict().items()} == {
        "sigma_raw": (2, 6, 2), "mu_raw": (2, 6, 2), "theta_raw": (2, 6), "weight": (8, 3, 6), "bias": (8,)}
    sep = GDConv2d(3, 8, 5, num_bases=2, order=2, separated=True)
    assert {k: tuple(v.shape) for k, v in sep.state_dict().items()} == {
        "sigma_raw": (2, 6, 2), "mu_raw": (2, 6, 2), "theta_raw": (2, 6), "weight_out": (8, 6),
        "weight_in": (2, 6, 3), "bias": (8,)}
    grouped = GDConv2d(6, 12, 5, groups=3, num_bases=3, order=2, separated=True)
    assert tuple(grouped.weight_in.shape) == (3, 6, 2) and tuple(grouped.weight_out.shape) == (12, 6)
    assert "groups=3" in repr(grouped) and "groups" not in repr(plain)


# ------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("separated, impl", [(False, "dense"), (False, "basis"), (True, "dense"), (True, "factorized")])
@pytest.mark.parametrize("cin, cout, groups, num_bases", [(4, 4, 4, 2), (2, 4, 2, 4)], ids=["dw-shared", "g2-B4"])
def test_gradcheck(cin: int, cout: int, groups: int, num_bases: int, separated: bool, impl: str) -> None:
    m = make(cin, cout, groups, num_bases, separated, kernel_size=3, impl=impl, stride=2, padding=1)
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(1, cin, 6, 5, dtype=F64, requires_grad=True)

    def run(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(m, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(run, (x, *[p.detach().clone().requires_grad_(True) for p in m.parameters()]))


# ------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize("kwargs, match", [
    (dict(groups=0), "groups must be a positive int, got 0"),
    (dict(groups=True), "groups must be a positive int, got True"),
    (dict(groups=2.0), "groups must be a positive int, got 2.0"),
    (dict(in_channels=5, groups=2),
     r"in_channels \(5\) and out_channels \(12\) must both be divisible by groups \(2\)"),
    (dict(out_channels=9, groups=2, in_channels=4), r"out_channels \(9\) .* divisible by groups \(2\)"),
    (dict(groups=4, num_bases=6), r"with groups=4, num_bases \(6\) must be a multiple of groups"),
    (dict(groups=4, num_bases=3), r"out_channels \(12\) must be divisible by num_bases \(3\)|with groups=4"),
])
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    args = {"in_channels": 4, "out_channels": 12, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        GDConv2d(**args)


def test_bad_input_channels_named() -> None:
    m = GDConv2d(8, 8, 3, groups=8)
    with pytest.raises(ValueError, match="expects 8 input channels, got 4"):
        m(torch.randn(1, 4, 5, 5))


# ------------------------------------------------------------------------------------------ large kernels, init
def test_parameters_do_not_grow_with_kernel_size() -> None:
    """A depthwise GD filter's size costs no parameters: the same count at 7×7 and 51×51."""
    counts = {k: sum(p.numel() for p in GDConv2d(32, 32, k, groups=32, num_bases=1, order=3).parameters())
              for k in (7, 31, 51)}
    assert len(set(counts.values())) == 1, counts
    assert counts[51] == 32 * 10 + 10 * 5 + 32  # ω per channel and kernel, σ μ θ per kernel, bias
    assert counts[51] < 32 * 51 * 51 / 20  # nn.Conv2d: 83,232 (+32)


def test_large_depthwise_kernel_matches_reference() -> None:
    m = make(3, 3, 3, 3, False, kernel_size=31, seed=3)
    x = torch.randn(1, 3, 20, 17, dtype=F64)
    for impl in ("dense", "basis"):
        m.impl = impl
        torch.testing.assert_close(m(x), reference_forward(m, x), rtol=1e-10, atol=1e-12, msg=impl)
    big = GDConv2d(4, 4, 51, groups=4, order=3)
    assert big(torch.randn(1, 4, 9, 9)).shape == (1, 4, 9, 9)
    assert big.select_impl() == "dense"  # depthwise: one k×k filter per channel beats N per channel


@pytest.mark.parametrize("separated", [False, True], ids=["nonsep", "sep"])
def test_depthwise_init_preserves_variance(separated: bool) -> None:
    """He-style init over the fan-in ``in/g``: E[out²] ≈ 2 for white unit input (1/C of it if ``in`` were used)."""
    torch.manual_seed(5)
    m = GDConv2d(256, 256, 7, groups=256, num_bases=1, order=2, separated=separated, bias=False)
    with torch.no_grad():
        second_moment = m(torch.randn(4, 256, 24, 24)).pow(2).mean().item()
    assert 1.0 < second_moment < 4.0, second_moment


# ------------------------------------------------------------------------------------------ reparameterize, export
@pytest.mark.parametrize("separated, impl", [(False, "dense"), (False, "basis"), (True, "dense"), (True, "factorized")])
@pytest.mark.parametrize("cin, cout, groups, num_bases", [(6, 6, 6, 3), (4, 8, 2, 4), (6, 12, 6, 2)],
                         ids=["dw", "g2-B4", "dw-mult2"])
def test_reparameterize_to_grouped_convs(cin: int, cout: int, groups: int, num_bases: int, separated: bool,
                                         impl: str) -> None:
    m = make(cin, cout, groups, num_bases, separated, impl=impl).eval()
    x = torch.randn(2, cin, 9, 8, dtype=F64)
    want = reference_forward(m, x)
    with torch.no_grad():
        m.reparameterize()
        torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-12)
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    if impl == "factorized":
        assert [c.groups for c in convs][0] == groups and len(convs) == 3
    else:
        assert len(convs) == 1 and convs[0].groups == groups and convs[0].weight.shape[1] == cin // groups


def test_torch_export_grouped() -> None:
    m = GDConv2d(8, 8, 7, groups=8, num_bases=2, order=2).eval()
    x = torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        want = m(x)
        m.reparameterize()
        program = torch.export.export(m, (x,))
    torch.testing.assert_close(program.module()(x), want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ steer
@pytest.mark.parametrize("separated", [False, True], ids=["nonsep", "sep"])
def test_steer_grouped_rotation_is_exact_at_90_degrees(separated: bool) -> None:
    """Rotating a square odd kernel by 90° permutes its taps: steered(rot90(x)) == rot90(layer(x))."""
    m = make(6, 6, 6, 2, separated, kernel_size=7)
    x = torch.randn(1, 6, 13, 13, dtype=F64)
    steered = steer_gdconv(m, angle=90.0)
    assert steered.groups == 6
    with torch.no_grad():
        torch.testing.assert_close(steered(torch.rot90(x, 1, (-2, -1))), torch.rot90(m(x), 1, (-2, -1)),
                                   rtol=1e-8, atol=1e-10)


def _continuous_kernel(m: GDConv2d, coords: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``(out, in/g, ...)``: ``k(x) = Σ_n ω φ_n(x)`` at arbitrary points, from the closed-form series."""
    x1, x2 = coords
    sigma, mu, theta = m.sigma.detach().double(), m.mu.detach().double(), m.theta.detach().double()
    orders = [(p, n - p) for n in range(m.order + 1) for p in range(n + 1)]
    per_basis = m.out_channels // m.num_bases
    out = torch.zeros(m.out_channels, m.in_channels // m.groups, *x1.shape, dtype=F64)
    for o in range(m.out_channels):
        b = o // per_basis
        for n, (p, q) in enumerate(orders):
            c, s_ = torch.cos(theta[b, n]), torch.sin(theta[b, n])
            y1 = x1 * c + x2 * s_ - mu[b, n, 0]
            y2 = -x1 * s_ + x2 * c - mu[b, n, 1]
            phi = gaussian_derivative(y1, sigma[b, n, 0], p) * gaussian_derivative(y2, sigma[b, n, 1], q)
            out[o] += m.weight[o, :, n].detach().double().view(-1, 1, 1) * phi
    return out


def test_steer_grouped_scale_follows_the_continuous_kernel() -> None:
    """Scale s: the steered depthwise kernel is the continuous original resampled, ``k(x/s) / s²`` (closed form)."""
    m = make(4, 4, 4, 2, False, kernel_size=7)
    steered = steer_gdconv(m, scale=2.0)
    assert steered.kernel_size == (15, 15) and steered.groups == 4
    taps = torch.arange(15, dtype=F64) - 7
    x2, x1 = torch.meshgrid(taps, taps, indexing="ij")
    want = _continuous_kernel(m, (x1 / 2, x2 / 2)) / 4
    torch.testing.assert_close(steered.dense_weight().detach(), want, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------ fit and gdify
def test_rows_residual_equals_moment_residual() -> None:
    """The variable-projection residual through the rows T (R < P) equals the one through M = TᵀT and lstsq."""
    torch.manual_seed(6)
    rows, phi = torch.randn(3, 2, 25, dtype=F64), torch.randn(3, 6, 25, dtype=F64)
    via_rows = _projection_residual(phi, _target_moment(rows), 0.0)
    via_moment = _projection_residual(phi, rows.transpose(-1, -2) @ rows, 0.0)
    coef = torch.linalg.lstsq(phi.transpose(-1, -2), rows.transpose(-1, -2)).solution  # (B, N, R)
    lstsq = (rows - (phi.transpose(-1, -2) @ coef).transpose(-1, -2)).pow(2).sum((-2, -1))
    torch.testing.assert_close(via_rows, lstsq, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(via_moment, lstsq, rtol=1e-8, atol=1e-10)


def test_fit_each_channel_of_a_depthwise_conv() -> None:
    """num_bases='groups': every channel's filter gets its own basis, fitted to that filter alone.

    Each channel's target is one GD kernel of its own geometry and order (exactly representable by a
    per-channel basis, not by one shared basis of N=6 kernels: 4 unrelated geometries)."""
    torch.manual_seed(7)
    source = GDConv2d(4, 4, 7, groups=4, num_bases=4, order=2)
    with torch.no_grad():
        source.weight.zero_()
        for c, n in enumerate([0, 2, 3, 4]):
            source.weight[c, 0, n] = 1.0 + c
    conv = nn.Conv2d(4, 4, 7, padding=3, groups=4)
    with torch.no_grad():
        conv.weight.copy_(source.dense_weight())
    gd, report = conv_to_gd(conv, num_bases="groups", order=2, restarts=1, steps=60, polish_steps=20,
                            subspace_candidates=8)
    assert gd.groups == 4 and gd.num_bases == 4 and gd.weight.shape == (4, 1, 6)
    assert max(report.kernel_error_per_channel) < 1e-3, report.summary()
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(gd(x), conv(x), rtol=0, atol=2e-3 * conv(x).abs().max().item())


def test_fit_shared_basis_reports_against_its_bound() -> None:
    """A random depthwise conv with one shared basis: the error is real and never below the SVD bound."""
    torch.manual_seed(8)
    conv = nn.Conv2d(12, 12, 5, padding=2, groups=12)
    gd = GDConv2d(12, 12, 5, padding=2, groups=12, num_bases=1, order=2)
    report = fit_gdconv_(gd, conv.weight, conv.bias, restarts=2, steps=60, polish_steps=10, subspace_candidates=4)
    assert report.subspace_bound - 1e-6 <= report.kernel_error < 1.0
    with pytest.raises(ValueError, match=r"weight has shape \(12, 12, 5, 5\), the GDConv2d expects \(12, 1, 5, 5\)"):
        fit_gdconv_(gd, torch.randn(12, 12, 5, 5))


def test_gdify_converts_depthwise_and_names_what_it_skips() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 7, padding=3, groups=8),
                        nn.Conv2d(8, 16, 1), nn.ConvTranspose2d(16, 4, 3))
    gdify(net, "all", fit=False, num_bases="groups", order=2)
    assert isinstance(net[0], GDConv2d) and net[0].groups == 1 and net[0].num_bases == 1
    assert isinstance(net[1], GDConv2d) and net[1].groups == 8 and net[1].num_bases == 8
    assert set(net.gdify_skipped) == {"2", "3"}
    assert "1x1" in net.gdify_skipped["2"] and "transposed" in net.gdify_skipped["3"]
    with pytest.raises(ValueError, match="groups comes from the converted convolution"):
        conv_to_gd(nn.Conv2d(8, 8, 3, groups=8), fit=False, groups=2)


def test_gdify_convnext_atto_all_layers() -> None:
    """timm's ConvNeXt-atto: every spatial conv (12 depthwise 7×7, the 4×4 stem, 3 downsamples) converts; only
    the 1×1 MLP convs are refused, with the reason."""
    import timm

    model = timm.create_model("convnext_atto", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    gdify(model, "all", fit=False, num_bases="groups", order=2)
    assert model.gdify_skipped and all(name.endswith(("mlp.fc1", "mlp.fc2")) and "1x1" in reason
                                       for name, reason in model.gdify_skipped.items())
    gd = [m for m in model.modules() if isinstance(m, GDConv2d)]
    assert len(gd) == 16 and sum(m.groups > 1 for m in gd) == 12
    with torch.no_grad():
        assert model(x).shape == (1, 10)
