"""Steering GD layers and models: kernels against a closed-form reference, exact 90° equivariance, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from gdzoo import GDConv2d, steer
from gdzoo.data.fashion_mnist import find_fashion_mnist


def gaussian_derivative(y: torch.Tensor, sigma: torch.Tensor, p: int) -> torch.Tensor:
    """``d^p/dy^p`` of the normalised Gaussian, written out for p <= 3."""
    g = torch.exp(-y**2 / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    return {0: g, 1: -y / sigma**2 * g, 2: (y**2 - sigma**2) / sigma**4 * g,
            3: -(y**3 - 3 * y * sigma**2) / sigma**6 * g}[p]


def reference_steered_kernel(layer: GDConv2d, size: tuple[int, int], scale: float, angle: float) -> torch.Tensor:
    """``k'(x) = k(R(a)⁻¹ x / s) / s²`` with ``k`` the layer's continuous kernel, sampled on a ``size`` grid."""
    kh, kw = size
    rows = torch.arange(kh, dtype=torch.float64) - (kh - 1) / 2
    cols = torch.arange(kw, dtype=torch.float64) - (kw - 1) / 2
    x2, x1 = torch.meshgrid(rows, cols, indexing="ij")
    a = math.radians(angle)  # R(a)^-1 = R(-a), R(t) = [[cos t, sin t], [-sin t, cos t]]
    z1 = (x1 * math.cos(a) - x2 * math.sin(a)) / scale
    z2 = (x1 * math.sin(a) + x2 * math.cos(a)) / scale
    sigma, mu, theta = layer.sigma.double(), layer.mu.double(), layer.theta.double()
    b, n = theta.shape
    basis = torch.empty(b, n, kh, kw, dtype=torch.float64)
    for i in range(b):
        for j, (p, q) in enumerate(layer.orders):
            t = theta[i, j]
            u1 = z1 * torch.cos(t) + z2 * torch.sin(t) - mu[i, j, 0]
            u2 = -z1 * torch.sin(t) + z2 * torch.cos(t) - mu[i, j, 1]
            basis[i, j] = gaussian_derivative(u1, sigma[i, j, 0], p) * gaussian_derivative(u2, sigma[i, j, 1], q)
    per = layer.out_channels // b
    kernel = torch.empty(layer.out_channels, layer.in_channels, kh, kw, dtype=torch.float64)
    for o in range(layer.out_channels):
        for c in range(layer.in_channels):
            if layer.separated:
                w = layer.weight_out[o].double() * layer.weight_in[o // per, :, c].double()
            else:
                w = layer.weight[o, c].double()
            kernel[o, c] = (w[:, None, None] * basis[o // per]).sum(0)
    return kernel / scale**2


@pytest.mark.parametrize("separated", [False, True])
@pytest.mark.parametrize(("scale", "angle", "size"), [(1.0, 90.0, 7), (1.0, 33.0, 7), (1.7, 0.0, 13), (2.0, -140.0, 15),
                                                      (0.6, 25.0, 5), (2.5, 200.0, 19)])
def test_steered_kernels_equal_the_rescaled_rotated_continuous_kernel(separated: bool, scale: float, angle: float,
                                                                       size: int) -> None:
    torch.manual_seed(0)
    layer = GDConv2d(3, 4, 7, num_bases=2, order=3, separated=separated, dtype=torch.float64)
    steered = layer.steered(scale=scale, angle=angle)
    assert steered.kernel_size == (size, size)
    with torch.no_grad():
        got = steered.dense_weight()
    with torch.no_grad():
        want = reference_steered_kernel(layer, (size, size), scale, angle)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12 * float(want.abs().max()))


def test_steered_layer_keeps_everything_else() -> None:
    layer = GDConv2d(2, 4, (5, 3), num_bases=2, order=2, padding=(2, 1), trainable=("sigma",))
    steered = layer.steered(scale=2.0)
    assert steered.kernel_size == (11, 7) and steered.padding == (5, 3)
    assert [n for n, _ in steered.named_parameters()] == [n for n, _ in layer.named_parameters()]
    assert [n for n, _ in steered.named_buffers()] == [n for n, _ in layer.named_buffers()]
    assert torch.equal(steered.bias, layer.bias)
    x = torch.randn(1, 2, 9, 9)
    assert steered(x).shape == layer(x).shape


@pytest.fixture(scope="module")
def fmnist_test_images() -> torch.Tensor:
    try:
        root = find_fashion_mnist()
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    import gzip

    with gzip.open(root / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:200]
    return (torch.from_numpy(images.copy()).float() / 255 - 0.2860) / 0.3530


@pytest.mark.parametrize("name", ["gd_fmnist", "gd_fmnist_sep"])
@pytest.mark.parametrize("angle", [90, 180, 270, -90])
def test_right_angle_steering_is_exact_on_real_images(name: str, angle: int, fmnist_test_images: torch.Tensor) -> None:
    """Stride-1 GD convs, even-sized 2×2 pools and global pooling: the network is exactly equivariant."""
    model = timm.create_model(name, pretrained=True).eval()
    x = fmnist_test_images
    with torch.no_grad():
        want = model(x)
        got = steer(model, angle=angle)(TF.rotate(x, angle))
    assert (got - want).abs().max() < 1e-4 * want.abs().max()


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Sums of broad anisotropic Gaussian blobs inside the central disc (so rotations do not crop)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    y, x = torch.meshgrid(rows, rows, indexing="ij")
    images = torch.zeros(n, 1, size, size, dtype=torch.float64)
    for i in range(n):
        for _ in range(4):
            cx, cy = (torch.rand(2, generator=g) - 0.5) * size * 0.4
            sx, sy = 2.5 + torch.rand(2, generator=g) * size * 0.08
            t = torch.rand(1, generator=g) * math.pi
            u = (x - cx) * torch.cos(t) + (y - cy) * torch.sin(t)
            v = -(x - cx) * torch.sin(t) + (y - cy) * torch.cos(t)
            images[i, 0] += torch.randn(1, generator=g) * torch.exp(-(u / sx) ** 2 / 2 - (v / sy) ** 2 / 2)
    return images.float()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def smooth_gd_net(seed: int = 0) -> nn.Module:
    """Two stride-1 GD layers with σ in [1.2, 2] on a 15×15 support (no truncation), ReLU, global pooling."""
    torch.manual_seed(seed)
    model = nn.Sequential(GDConv2d(1, 8, 15, num_bases=2, order=3), nn.ReLU(), GDConv2d(8, 8, 15, num_bases=2, order=3),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        for layer in (model[0], model[2]):
            sigma = 1.2 + 0.8 * torch.rand_like(layer.sigma_raw)
            layer.sigma_raw.copy_(torch.log(torch.expm1(sigma - layer.sigma_min)))
    return model.eval()


@pytest.mark.parametrize(("scale", "angle", "tolerance"), [(1.0, 37.0, 0.02), (1.0, 135.0, 0.02), (1.5, 0.0, 0.03),
                                                           (2.0, 60.0, 0.03), (0.75, 20.0, 0.05)])
def test_any_angle_and_scale_on_smooth_images(scale: float, angle: float, tolerance: float) -> None:
    """Off the 90° grid, steering is exact for the continuous kernels; the input's interpolation and the
    sampling of the kernels leave the pooled features of smooth images within ``tolerance`` (relative)."""
    model = smooth_gd_net()
    x = smooth_images(8, 48)
    moved = TF.rotate(x, angle, interpolation=TF.InterpolationMode.BILINEAR)
    if scale != 1.0:
        moved = F.interpolate(moved, scale_factor=scale, mode="bilinear", antialias=True)
    with torch.no_grad():
        want = model(x)
        steered = _relative(steer(model, scale=scale, angle=angle)(moved), want)
        unsteered = _relative(model(moved), want)
    assert steered < tolerance and steered < unsteered / 3, (steered, unsteered)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "2", True])
def test_bad_scale_or_angle_named(bad: object) -> None:
    model = nn.Sequential(GDConv2d(1, 2, 5))
    with pytest.raises(ValueError, match="scale"):
        steer(model, scale=bad)  # type: ignore[arg-type]
    if not (isinstance(bad, float) and bad <= 0):
        with pytest.raises(ValueError, match="angle"):
            steer(model, angle=bad)  # type: ignore[arg-type]


def test_non_steerable_parts_are_named_unless_partial() -> None:
    model = nn.Sequential(GDConv2d(1, 4, 5), nn.Conv2d(4, 4, 3, padding=1), GDConv2d(4, 4, 3, stride=2, padding=1),
                          nn.Conv2d(4, 2, 1))
    with pytest.raises(ValueError) as err:
        steer(model, angle=30)
    message = str(err.value)
    assert "1: free-form Conv2d with kernel (3, 3)" in message and "2: stride (2, 2)" in message
    assert "3:" not in message and "partial=True" in message  # the 1×1 conv steers (it commutes with any warp)
    with pytest.warns(UserWarning, match="not steered: 1, 2"):
        steered = steer(model, angle=30, partial=True)
    assert steered[0].theta_raw is not model[0].theta_raw
    assert torch.allclose(steered[0].theta, model[0].theta - math.radians(30))
    assert torch.equal(steered[2].theta, model[2].theta)


def test_free_form_model_is_refused() -> None:
    with pytest.raises(ValueError, match="stem.conv: free-form Conv2d"):
        steer(timm.create_model("ff_fmnist"), angle=10)


def test_steer_copies_and_identity_is_exact() -> None:
    model = timm.create_model("gd_fmnist").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(steer(model)(x), model(x), atol=1e-5)
        steer(model, scale=2.0, angle=45)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
