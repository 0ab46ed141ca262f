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

:func:`gd_conv2d` is the whole layer as one function of its geometry and weights. It runs in two steps that
``GDConv2d.forward`` shares (the layer caches the kernels of the first, made from its raw σ): :func:`impl_kernels`
(the kernels a path convolves with) and :func:`gd_conv2d_with_kernels` (that path's convolutions);
:func:`select_impl` picks the path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..kernels import derivative_orders, gaussian_derivative_basis
from ._params import PADDING_MODES, padding_arg, positive_pair

__all__ = [
    "IMPLS",
    "ConvSpec",
    "check_impl",
    "gd_conv2d",
    "gd_conv2d_with_kernels",
    "impl_kernels",
    "select_impl",
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
# The execution paths a layer or gd_conv2d may ask for ('auto': the cheapest by path_costs)
IMPLS = ("auto", "dense", "basis", "factorized")


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
        >>> x, lam, beta = torch.randn(2, 3, 9, 9), torch.randn(8, 6), torch.randn(2, 6, 3)
        >>> phi = torch.randn(2, 6, 5, 5)
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
        costs["basis"] = (in_channels * per_input * num_kernels * k2 * DEPTHWISE_COST
                          + out_channels * cin_g * num_kernels)
    return costs


def check_impl(impl: str, separated: bool) -> None:
    """A ValueError unless ``impl`` is one of :data:`IMPLS` that serves the combination (``separated``: eq. (4))."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "basis" and separated:
        raise ValueError("impl='basis' needs separated=False; use 'dense' or 'factorized' with separated=True")
    if impl == "factorized" and not separated:
        raise ValueError("impl='factorized' needs separated=True; use 'dense' or 'basis' with separated=False")


def select_impl(impl: str, *layer: Any) -> str:
    """The execution path: ``impl``, or when ``'auto'`` the cheapest one for ``layer`` (:func:`path_costs`' arguments:
    in and out channels, bases, kernels per basis, kernel size, stride, separated, groups).

    Example:
        >>> select_impl("auto", 64, 64, 4, 10, (7, 7), (1, 1), True)
        'factorized'
        >>> select_impl("dense", 64, 64, 4, 10, (7, 7), (1, 1), True)
        'dense'
    """
    if impl != "auto":
        return impl
    costs = path_costs(*layer)
    return min(costs, key=costs.__getitem__)


def impl_kernels(
    impl: str, basis: torch.Tensor, weight: torch.Tensor, weight_in: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """The kernels path ``impl`` convolves with, the weights cast to the basis' dtype: ``'dense'``: the combined
    ``(W,)`` of eqs. (2)–(4); ``'basis'``: ``(ω, φ)``; ``'factorized'``: ``(λ, β, φ)``.

    ``weight`` is ω ``(out, in/g, N)``, or λ ``(out, N)`` when ``weight_in`` (β, ``(B, N, in/g)``) is given.

    Example:
        >>> phi = torch.randn(2, 6, 5, 5)
        >>> [k.shape for k in impl_kernels("dense", phi, torch.randn(8, 3, 6))]
        [torch.Size([8, 3, 5, 5])]
    """
    weights = (weight.to(basis.dtype),) if weight_in is None else (weight.to(basis.dtype), weight_in.to(basis.dtype))
    if impl == "dense":
        with torch.autocast(basis.device.type, enabled=False):
            return (combine_dense(*weights, basis) if weight_in is None else combine_separated(*weights, basis),)
    return (*weights, basis)


def gd_conv2d_with_kernels(
    x: torch.Tensor,
    impl: str,
    kernels: Sequence[torch.Tensor],
    bias: torch.Tensor | None,
    spec: ConvSpec,
    groups: int = 1,
) -> torch.Tensor:
    """Path ``impl`` (not ``'auto'``) on the :func:`impl_kernels` ``kernels``; kernels and bias are cast to ``x``'s
    dtype, and an unbatched ``(C, H, W)`` input gives an unbatched output, as ``nn.Conv2d``."""
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    kernels = tuple(k.to(x.dtype) for k in kernels)
    bias = bias.to(x.dtype) if bias is not None else None
    if impl == "dense":
        y = gd_conv2d_dense(x, kernels[0], bias, spec, groups)
    elif impl == "basis":
        y = gd_conv2d_basis_first(x, *kernels, bias, spec, groups)
    else:
        y = gd_conv2d_factorized(x, *kernels, bias, spec, groups)
    return y.squeeze(0) if unbatched else y


def _order_of(num_kernels: int) -> int:
    """``K`` with ``(K+1)(K+2)/2 = num_kernels`` (a ValueError when there is none)."""
    order = round((math.sqrt(8 * num_kernels + 1) - 3) / 2)
    if order < 0 or (order + 1) * (order + 2) // 2 != num_kernels:
        raise ValueError(f"a basis holds (K+1)(K+2)/2 kernels (1, 3, 6, 10, 15, ...) for order K; got {num_kernels} "
                         "(sigma's second-to-last dimension)")
    return order


def gd_conv2d(
    x: torch.Tensor,
    sigma: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: str | int | tuple[int, int] = "same",
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    kernel_size: int | tuple[int, int],
    weight_in: torch.Tensor | None = None,
    padding_mode: str = "zeros",
    impl: str = "auto",
) -> torch.Tensor:
    """The GD convolution as a function: ``GDConv2d``'s output for the given geometry and weights.

    Args:
        x: ``(batch, in, H, W)`` or ``(in, H, W)`` floating-point input.
        sigma: ``(B, N, 2)`` scales ``(σ1, σ2)`` (> 0) of the ``N = (K+1)(K+2)/2`` kernels of each of ``B`` bases
            (orders ``p + q <= K``, in :func:`~gdzoo.kernels.derivative_orders`' order); mu: ``(B, N, 2)`` shifts
            in taps; theta: ``(B, N)`` angles in radians (``GDConv2d``'s ``sigma``, ``mu``, ``theta``).
        weight: ω ``(out, in/groups, N)`` (eqs. (2)/(3)), or λ ``(out, N)`` when ``weight_in`` is given.
        bias: ``(out,)`` or None.
        stride, padding, dilation, groups, padding_mode: as ``nn.Conv2d`` (``padding`` defaults to ``'same'``).
        kernel_size: the sampled grid ``(kH, kW)`` (an int for a square one).
        weight_in: β ``(B, N, in/groups)`` for the separated combination of eq. (4).
        impl: the execution path (``'auto'``: the cheapest, as ``GDConv2d``).

    Example:
        >>> sigma, mu, theta = torch.full((2, 6, 2), 1.5), torch.zeros(2, 6, 2), torch.zeros(2, 6)  # B=2, order 2
        >>> gd_conv2d(torch.randn(4, 3, 16, 16), sigma, mu, theta, torch.randn(8, 3, 6), kernel_size=7).shape
        torch.Size([4, 8, 16, 16])
        >>> lam, beta = torch.randn(8, 6), torch.randn(2, 6, 3)  # separated (eq. 4), strided
        >>> gd_conv2d(torch.randn(4, 3, 16, 16), sigma, mu, theta, lam, stride=2, padding=3, kernel_size=7,
        ...           weight_in=beta).shape
        torch.Size([4, 8, 8, 8])
    """
    kernel_size, stride, dilation = (positive_pair(n, v) for n, v in
                                     (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)))
    padding = padding_arg(padding, stride)
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    separated = weight_in is not None
    check_impl(impl, separated)
    if sigma.dim() != 3 or sigma.shape[-1] != 2 or mu.shape != sigma.shape or theta.shape != sigma.shape[:-1]:
        raise ValueError(f"sigma and mu must be (B, N, 2) and theta (B, N), got shapes {tuple(sigma.shape)}, "
                         f"{tuple(mu.shape)}, {tuple(theta.shape)}")
    num_bases, n = theta.shape
    order = _order_of(n)
    if not x.is_floating_point() or x.dim() not in (3, 4):
        raise ValueError(f"x must be a floating-point (batch, in, H, W) or (in, H, W) tensor, got {x.dtype} "
                         f"of shape {tuple(x.shape)}")
    cin, out = x.shape[-3], weight.shape[0]
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1 or cin % groups or out % groups:
        raise ValueError(f"groups must be a positive int dividing the {cin} input and {out} output channels, "
                         f"got {groups!r}")
    bases_per_group(num_bases, groups)
    if out % num_bases:
        raise ValueError(f"the output channels (weight.shape[0] = {out}) must be a multiple of the {num_bases} bases")
    shapes = {"weight (λ)": (weight, (out, n)), "weight_in (β)": (weight_in, (num_bases, n, cin // groups))} if (
        separated) else {"weight (ω)": (weight, (out, cin // groups, n))}
    for name, (tensor, shape) in shapes.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} for {cin} input channels, groups={groups}, {num_bases} "
                             f"bases of {n} kernels; got {tuple(tensor.shape)}")
    dtype = torch.promote_types(sigma.dtype, torch.float32)  # as GDConv2d: bases in at least float32
    orders = torch.tensor(derivative_orders(order), device=sigma.device)
    with torch.autocast(sigma.device.type, enabled=False):
        basis = gaussian_derivative_basis(sigma.to(dtype), mu.to(dtype), theta.to(dtype), orders, kernel_size, order)
    impl = select_impl(impl, cin, out, num_bases, n, kernel_size, stride, separated, groups)
    spec = ConvSpec(stride, padding, dilation, padding_mode, kernel_size)
    return gd_conv2d_with_kernels(x, impl, impl_kernels(impl, basis, weight, weight_in), bias, spec, groups)
