"""Functional forms of the GD convolution: pure functions, one per execution path.

All paths compute the same cross-correlation as ``F.conv2d`` with the dense weight of eqs. (2)–(4):

- ``dense``: build the ``(out, in, kH, kW)`` kernel and run one convolution;
- ``basis``: non-separated only. Convolve every input channel with every basis kernel
  (depthwise), then mix with a grouped 1×1 convolution (cheaper for wide, large kernels);
- ``factorized``: separated only. 1×1 (β) → depthwise k×k (φ) → grouped 1×1 (λ), eq. (4)
  evaluated literally.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "ConvSpec",
    "combine_dense",
    "combine_separated",
    "spatial_conv",
    "gd_conv2d_dense",
    "gd_conv2d_basis_first",
    "gd_conv2d_factorized",
    "path_costs",
    "DEPTHWISE_COST",
]

# Relative cost of one depthwise multiply-add against one dense-convolution multiply-add, as used by
# ``impl='auto'``. Depthwise kernels reuse far less data per load: on the 2-core CPU the ratio of
# measured time to multiply-adds is ~25× that of a dense convolution (benchmarks/bench_gdconv.py).
DEPTHWISE_COST = 25.0


@dataclass(frozen=True)
class ConvSpec:
    """Spatial arguments of a convolution, with ``nn.Conv2d``'s meaning."""

    stride: tuple[int, int]
    padding: str | tuple[int, int]
    dilation: tuple[int, int]
    padding_mode: str
    kernel_size: tuple[int, int]

    def explicit_padding(self) -> tuple[int, int, int, int]:
        """``F.pad`` amounts (left, right, top, bottom) that ``nn.Conv2d`` uses for non-zero modes."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            pads = []
            for k, d in zip(reversed(self.kernel_size), reversed(self.dilation)):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return tuple(pads)  # type: ignore[return-value]
        ph, pw = self.padding
        return (pw, pw, ph, ph)


def spatial_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec, groups: int = 1
) -> torch.Tensor:
    """``F.conv2d`` with ``spec``'s stride, padding, dilation and padding mode (as ``nn.Conv2d``)."""
    if spec.padding_mode != "zeros":
        x = F.pad(x, spec.explicit_padding(), mode=spec.padding_mode)
        return F.conv2d(x, weight, bias, spec.stride, 0, spec.dilation, groups)
    return F.conv2d(x, weight, bias, spec.stride, spec.padding, spec.dilation, groups)


def combine_dense(weight: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Eqs. (2)/(3): ``W[b·(out/B)+j, i] = Σ_n ω[b, j, i, n] φ^{b,n}``.

    Args:
        weight: ``(out, in, N)`` combination weights ω; output ``o`` belongs to basis ``o // (out/B)``.
        basis: ``(B, N, kH, kW)``.

    Returns:
        ``(out, in, kH, kW)``.

    Example:
        >>> combine_dense(torch.randn(8, 3, 6), torch.randn(2, 6, 5, 5)).shape
        torch.Size([8, 3, 5, 5])
    """
    num_bases, n, kh, kw = basis.shape
    out, cin, _ = weight.shape
    # One batched matmul over bases, (B, J·in, N) @ (B, N, kH·kW): same product as
    # einsum("bjin,bnhw->bjihw") without its permute/reshape overhead (this runs every train step).
    w = weight.reshape(num_bases, (out // num_bases) * cin, n)
    return torch.bmm(w, basis.reshape(num_bases, n, kh * kw)).view(out, cin, kh, kw)


def combine_separated(weight_out: torch.Tensor, weight_in: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Eq. (4): ``W[b·(out/B)+j, i] = Σ_n λ[b, j, n] β[b, n, i] φ^{b,n}``.

    Args:
        weight_out: ``(out, N)`` output combination λ.
        weight_in: ``(B, N, in)`` input combination β.
        basis: ``(B, N, kH, kW)``.

    Returns:
        ``(out, in, kH, kW)``.

    Example:
        >>> combine_separated(torch.randn(8, 6), torch.randn(2, 6, 3), torch.randn(2, 6, 5, 5)).shape
        torch.Size([8, 3, 5, 5])
    """
    num_bases, n, kh, kw = basis.shape
    out, cin = weight_out.shape[0], weight_in.shape[2]
    lam = weight_out.reshape(num_bases, out // num_bases, n)
    # Scale the basis by β first (B·N·in·k² products), then contract with λ in one batched matmul.
    scaled = weight_in.unsqueeze(-1).unsqueeze(-1) * basis.unsqueeze(2)  # (B, N, in, kH, kW)
    return torch.bmm(lam, scaled.view(num_bases, n, cin * kh * kw)).view(out, cin, kh, kw)


def gd_conv2d_dense(
    x: torch.Tensor, dense_weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec
) -> torch.Tensor:
    """One convolution with the combined ``(out, in, kH, kW)`` kernel."""
    return spatial_conv(x, dense_weight, bias, spec)


def gd_conv2d_basis_first(
    x: torch.Tensor, weight: torch.Tensor, basis: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec
) -> torch.Tensor:
    """Non-separated path: depthwise basis convolution of every input channel, then grouped 1×1 mix.

    Example:
        >>> spec = ConvSpec((1, 1), "same", (1, 1), "zeros", (5, 5))
        >>> x, w, phi = torch.randn(2, 3, 9, 9), torch.randn(8, 3, 6), torch.randn(2, 6, 5, 5)
        >>> y = gd_conv2d_basis_first(x, w, phi, None, spec)
        >>> torch.allclose(y, gd_conv2d_dense(x, combine_dense(w, phi), None, spec), atol=1e-4)
        True
    """
    num_bases, n, kh, kw = basis.shape
    out, cin, _ = weight.shape
    depthwise = basis.reshape(1, num_bases * n, 1, kh, kw).expand(cin, -1, -1, -1, -1)
    feats = spatial_conv(x, depthwise.reshape(cin * num_bases * n, 1, kh, kw), None, spec, groups=cin)
    batch, _, ho, wo = feats.shape
    if num_bases > 1:  # channels (i, b, n) → (b, i, n) so that each basis is one 1×1 group
        feats = feats.view(batch, cin, num_bases, n, ho, wo).transpose(1, 2).reshape(batch, -1, ho, wo)
    return F.conv2d(feats, weight.reshape(out, cin * n, 1, 1), bias, groups=num_bases)


def gd_conv2d_factorized(
    x: torch.Tensor,
    weight_out: torch.Tensor,
    weight_in: torch.Tensor,
    basis: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
) -> torch.Tensor:
    """Separated path, eq. (4) literally: 1×1 (β) → depthwise k×k (φ) → grouped 1×1 (λ).

    Example:
        >>> spec = ConvSpec((1, 1), "same", (1, 1), "zeros", (5, 5))
        >>> x, lam, beta, phi = torch.randn(2, 3, 9, 9), torch.randn(8, 6), torch.randn(2, 6, 3), torch.randn(2, 6, 5, 5)
        >>> y = gd_conv2d_factorized(x, lam, beta, phi, None, spec)
        >>> torch.allclose(y, gd_conv2d_dense(x, combine_separated(lam, beta, phi), None, spec), atol=1e-4)
        True
    """
    num_bases, n, kh, kw = basis.shape
    out = weight_out.shape[0]
    cin = weight_in.shape[2]
    mixed = F.conv2d(x, weight_in.reshape(num_bases * n, cin, 1, 1))
    filtered = spatial_conv(mixed, basis.reshape(num_bases * n, 1, kh, kw), None, spec, groups=num_bases * n)
    return F.conv2d(filtered, weight_out.reshape(out, n, 1, 1), bias, groups=num_bases)


def path_costs(
    in_channels: int,
    out_channels: int,
    num_bases: int,
    num_kernels: int,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    separated: bool,
) -> dict[str, float]:
    """Estimated cost per output pixel of each path valid for the layer (multiply-adds, depthwise weighted).

    Example:
        >>> sorted(path_costs(64, 64, 4, 10, (7, 7), (1, 1), separated=True))
        ['dense', 'factorized']
    """
    k2 = kernel_size[0] * kernel_size[1]
    bn = num_bases * num_kernels
    costs = {"dense": float(out_channels * in_channels * k2)}
    if separated:
        costs["factorized"] = (
            in_channels * bn * stride[0] * stride[1] + bn * k2 * DEPTHWISE_COST + out_channels * num_kernels
        )
    else:
        costs["basis"] = in_channels * bn * k2 * DEPTHWISE_COST + out_channels * in_channels * num_kernels
    return costs
