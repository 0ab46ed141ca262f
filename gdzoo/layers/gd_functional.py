"""Functional forms of the GD convolution: pure functions, one per execution path.

All paths compute the same cross-correlation as ``F.conv2d`` with the dense weight of eqs. (2)–(4):

- ``dense``: build the ``(out, in, kH, kW)`` kernel and run one convolution;
- ``basis``: non-separated only. Convolve every input channel with every basis kernel
  (depthwise), then mix with a grouped 1×1 convolution (cheaper for wide, large kernels);
- ``factorized``: separated only. 1×1 (β) → depthwise k×k (φ) → grouped 1×1 (λ), eq. (4)
  evaluated literally.

Grouped convolutions (``groups = g``, ``nn.Conv2d``'s meaning): output ``o`` sees only the ``in/g`` input
channels of its group ``o // (out/g)``, and the dense weight is ``(out, in/g, kH, kW)``. Bases must then
either belong to one group each (``B`` a multiple of ``g``: ``B/g`` bases per group) or be shared by whole
groups (``g`` a multiple of ``B``); :func:`group_bases` lists which basis every (group, local basis) slot uses.
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
    "group_bases",
    "bases_per_group",
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


def bases_per_group(num_bases: int, groups: int) -> int:
    """How many bases the outputs of one group use: ``B/g`` when ``g`` divides ``B``, else 1 (a shared basis).

    Example:
        >>> bases_per_group(8, 4), bases_per_group(2, 8), bases_per_group(3, 1)
        (2, 1, 3)
    """
    if num_bases % groups and groups % num_bases:
        raise ValueError(
            f"with groups={groups}, num_bases ({num_bases}) must be a multiple of groups (bases per channel group) "
            f"or divide it (one basis shared by groups/num_bases whole groups)"
        )
    return max(num_bases // groups, 1)


def group_bases(num_bases: int, groups: int, device: torch.device | None = None) -> torch.Tensor:
    """``(g · B_g,)`` basis index of every (group, local basis) slot, ``B_g = bases_per_group(B, g)``.

    Example:
        >>> group_bases(4, 2).tolist(), group_bases(2, 4).tolist(), group_bases(3, 1).tolist()
        ([0, 1, 2, 3], [0, 0, 1, 1], [0, 1, 2])
    """
    per = bases_per_group(num_bases, groups)
    slots = torch.arange(groups * per, device=device)
    return slots if per > 1 or num_bases == groups else slots // (groups // num_bases)


def combine_dense(weight: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Eqs. (2)/(3): ``W[b·(out/B)+j, i] = Σ_n ω[b, j, i, n] φ^{b,n}``.

    Args:
        weight: ``(out, in/g, N)`` combination weights ω; output ``o`` belongs to basis ``o // (out/B)``.
        basis: ``(B, N, kH, kW)``.

    Returns:
        ``(out, in/g, kH, kW)`` (``g`` = groups; the formula does not depend on it).

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
        weight_in: ``(B, N, in/g)`` input combination β (over the input channels of the group).
        basis: ``(B, N, kH, kW)``.

    Returns:
        ``(out, in/g, kH, kW)``.

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
    x: torch.Tensor, dense_weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec, groups: int = 1
) -> torch.Tensor:
    """One (grouped) convolution with the combined ``(out, in/g, kH, kW)`` kernel."""
    return spatial_conv(x, dense_weight, bias, spec, groups)


def gd_conv2d_basis_first(
    x: torch.Tensor, weight: torch.Tensor, basis: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec,
    groups: int = 1,
) -> torch.Tensor:
    """Non-separated path: depthwise basis convolution of every input channel, then grouped 1×1 mix.

    Each input channel is filtered by the ``B_g·N`` kernels of the bases its group uses, then every
    (group, local basis) slot mixes its ``in/g · N`` maps into its outputs (one 1×1 group per slot).

    Example:
        >>> spec = ConvSpec((1, 1), "same", (1, 1), "zeros", (5, 5))
        >>> x, w, phi = torch.randn(2, 3, 9, 9), torch.randn(8, 3, 6), torch.randn(2, 6, 5, 5)
        >>> y = gd_conv2d_basis_first(x, w, phi, None, spec)
        >>> torch.allclose(y, gd_conv2d_dense(x, combine_dense(w, phi), None, spec), atol=1e-4)
        True
    """
    num_bases, n, kh, kw = basis.shape
    out, cin_g, _ = weight.shape
    cin = cin_g * groups
    per = bases_per_group(num_bases, groups)
    slots = basis if groups == 1 else basis[group_bases(num_bases, groups, basis.device)]  # (g·B_g, N, kH, kW)
    depthwise = slots.reshape(groups, 1, per * n, 1, kh, kw).expand(-1, cin_g, -1, -1, -1, -1)
    feats = spatial_conv(x, depthwise.reshape(cin * per * n, 1, kh, kw), None, spec, groups=cin)
    batch, _, ho, wo = feats.shape
    if per > 1:  # channels (g, i, b, n) → (g, b, i, n) so that each (group, basis) slot is one 1×1 group
        feats = feats.view(batch, groups, cin_g, per, n, ho, wo).transpose(2, 3).reshape(batch, -1, ho, wo)
    return F.conv2d(feats, weight.reshape(out, cin_g * n, 1, 1), bias, groups=groups * per)


def gd_conv2d_factorized(
    x: torch.Tensor,
    weight_out: torch.Tensor,
    weight_in: torch.Tensor,
    basis: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    groups: int = 1,
) -> torch.Tensor:
    """Separated path, eq. (4) literally: 1×1 (β) → depthwise k×k (φ) → grouped 1×1 (λ).

    With ``groups``, β mixes only the ``in/g`` channels of each group, once per (group, local basis) slot.

    Example:
        >>> spec = ConvSpec((1, 1), "same", (1, 1), "zeros", (5, 5))
        >>> x, lam, beta, phi = torch.randn(2, 3, 9, 9), torch.randn(8, 6), torch.randn(2, 6, 3), torch.randn(2, 6, 5, 5)
        >>> y = gd_conv2d_factorized(x, lam, beta, phi, None, spec)
        >>> torch.allclose(y, gd_conv2d_dense(x, combine_separated(lam, beta, phi), None, spec), atol=1e-4)
        True
    """
    num_bases, n, kh, kw = basis.shape
    out = weight_out.shape[0]
    cin_g = weight_in.shape[2]
    per = bases_per_group(num_bases, groups)
    if groups > 1:
        slots = group_bases(num_bases, groups, basis.device)
        basis, weight_in = basis[slots], weight_in[slots]
    slot_kernels = groups * per * n
    mixed = F.conv2d(x, weight_in.reshape(slot_kernels, cin_g, 1, 1), groups=groups)
    filtered = spatial_conv(mixed, basis.reshape(slot_kernels, 1, kh, kw), None, spec, groups=slot_kernels)
    return F.conv2d(filtered, weight_out.reshape(out, n, 1, 1), bias, groups=groups * per)


def path_costs(
    in_channels: int,
    out_channels: int,
    num_bases: int,
    num_kernels: int,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    separated: bool,
    groups: int = 1,
) -> dict[str, float]:
    """Estimated cost per output pixel of each path valid for the layer (multiply-adds, depthwise weighted).

    A grouped dense convolution with one input channel per group is itself depthwise, and weighted so.

    Example:
        >>> sorted(path_costs(64, 64, 4, 10, (7, 7), (1, 1), separated=True))
        ['dense', 'factorized']
        >>> costs = path_costs(64, 64, 1, 10, (7, 7), (1, 1), separated=False, groups=64)
        >>> min(costs, key=costs.__getitem__)
        'dense'
    """
    k2 = kernel_size[0] * kernel_size[1]
    cin_g = in_channels // groups
    slots = groups * bases_per_group(num_bases, groups)
    dense_cost = float(out_channels * cin_g * k2)
    costs = {"dense": dense_cost * DEPTHWISE_COST if cin_g == 1 and groups > 1 else dense_cost}
    if separated:
        costs["factorized"] = (
            cin_g * slots * num_kernels * stride[0] * stride[1] + slots * num_kernels * k2 * DEPTHWISE_COST
            + out_channels * num_kernels
        )
    else:
        per_input = slots // groups
        costs["basis"] = in_channels * per_input * num_kernels * k2 * DEPTHWISE_COST + out_channels * cin_g * num_kernels
    return costs
