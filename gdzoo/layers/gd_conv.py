"""``GDConv2d``: a convolution whose filters are learned combinations of Gaussian-derivative kernels.

A thin ``nn.Module`` over :mod:`gdzoo.kernels` (the kernels), :mod:`gdzoo.layers.gd_functional` (the execution
paths; :func:`~gdzoo.layers.gd_functional.gd_conv2d` is this layer as a function) and
:mod:`gdzoo.layers.kernel_cache` (reusing generated kernels). It follows ``nn.Conv2d``'s arguments and output
shapes. Steering lives in :mod:`gdzoo.layers.steer`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels import derivative_orders
from ..kernels.basis import ORDER_RTOL, accurate_order
from ..kernels.basis_fused import gaussian_derivative_basis_raw
from ..kernels.generator import uses_triton
from ._params import PADDING_MODES, float_pair, inverse_softplus  # noqa: F401  (PADDING_MODES: as before)
from .gd_functional import (
    IMPLS,
    bases_per_group,
    check_impl,
    gd_conv2d_with_kernels,
    group_bases,
    impl_kernels,
    select_impl,
)
from .kernel_cache import CachedKernelConv, _Snapshot
from .steer import steer_gdconv

__all__ = ["CachedKernelConv", "GDConv2d", "GEOMETRY_NAMES", "IMPLS", "no_weight_decay_names"]

GEOMETRY_NAMES = ("sigma", "mu", "theta")
RANDOM_SIGMA_RANGE = (0.5, 2.0)  # the authors' init ranges
RANDOM_MU_RANGE = (-1.0, 1.0)
# A basis kernel whose squared norm is below this fraction of the largest one in its basis is "degenerate"
# (numerically zero, e.g. an odd derivative sampled only on its zero line in a 1×k or 1×1 grid): the
# variance-preserving init must not divide by its norm.
DEGENERATE_NORM_SQ = 1e-8
STATE_ORDER = ("sigma_raw", "mu_raw", "theta_raw", "weight", "weight_out", "weight_in", "bias")
# Devices whose tensors the cache compares without a device sync: there it always pays.
_HOST_DEVICES = ("cpu",)


class GDConv2d(CachedKernelConv):
    """Fully trainable Gaussian-derivative convolution (Penaud--Polge et al., ICIP 2022).

    Every filter is a linear combination of anisotropic, shifted and rotated Gaussian-derivative
    kernels of orders ``p + q <= order``; ``num_bases`` bases each serve ``out_channels / num_bases``
    outputs. ``separated=True`` uses eq. (4) (``λ·β``) instead of eqs. (2)/(3) (``ω``).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode:
            as in ``nn.Conv2d`` (``padding`` defaults to ``'same'``; ``groups`` is keyword-only). With
            ``groups = g`` the dense weight is ``(out, in/g, kH, kW)``, as ``nn.Conv2d``'s.
        num_bases: number of independent bases ``B``; must divide ``out_channels``. With ``groups = g > 1``
            it must also be a multiple of ``g`` (``B/g`` bases of its own per channel group; depthwise:
            ``B = channels`` is one basis per channel) or divide ``g`` (one basis shared by ``g/B`` whole
            groups; depthwise ``B = 1``: one basis for every channel, ``N`` weights per channel).
        order: highest total derivative order ``K``; each basis holds ``(K+1)(K+2)/2`` kernels.
        separated: use the separated combination of eq. (4).
        trainable: which kernel geometries learn: a subset of ``('sigma', 'mu', 'theta')``. Those are
            ``nn.Parameter``; the others are fixed, registered as (persistent) buffers under the same names
            (``sigma_raw``, ``mu_raw``, ``theta_raw``), so the state-dict keys never depend on ``trainable``.
        init: ``'random'`` (σ ~ U[0.5, 2], μ ~ U[−1, 1], θ ~ U[−π, π]) or ``'fixed'``.
        sigma_init, mu_init, theta_init: values for ``init='fixed'`` (float or ``(x1, x2)`` pair).
        sigma_min: σ stays above this through ``σ = sigma_min + softplus(raw)``.
        impl: ``'auto'``, ``'dense'``, ``'basis'`` (non-separated) or ``'factorized'`` (separated).

    Kernel cache: while gradients are off (``torch.no_grad``, ``torch.inference_mode``: evaluation, EMA or
    teacher targets) the generated kernels are kept and reused as long as the tensors they come from (σ, μ,
    θ and the combination weights) hold the same values, compared bit for bit with a snapshot on every
    call. So any change is seen, whatever made it: optimizers (fused ones included), ``load_state_dict``,
    in-place ops and writes through ``param.data``. The cache is not used while the forward is captured
    (``torch.compile``, ``torch.export``, ONNX export, ``torch.jit.trace``, ``torch.func`` transforms), and
    it is neither pickled (``torch.save(module)``) nor deep-copied. On CUDA with the fused Triton generator
    (:mod:`gdzoo.kernels.generator`) there is no cache: regenerating costs less than the check's host sync.

    Derivatives of any order are exact (double backward, Hessian-vector products), and the layer works under
    ``torch.func`` (``functional_call``, ``grad``, ``vmap``, ``jvp``, ``jacrev``, ``jacfwd``, ``hessian``).

    Example:
        >>> conv = GDConv2d(3, 8, 7, num_bases=2, order=2)
        >>> conv(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 8, 16, 16])
        >>> conv.basis().shape, conv.dense_weight().shape
        (torch.Size([2, 6, 7, 7]), torch.Size([8, 3, 7, 7]))
        >>> depthwise = GDConv2d(64, 64, 31, groups=64, num_bases=1, order=2)  # 31×31, parameters independent of k
        >>> depthwise.dense_weight().shape, sum(p.numel() for p in depthwise.parameters())
        (torch.Size([64, 1, 31, 31]), 478)
    """

    no_decay_geometry = GEOMETRY_NAMES  # left out of weight decay (no_weight_decay_names)
    steer_as_gd = True  # re-posed by gdzoo.layers.steer (which asks this attribute rather than importing the class)

    _state_order = STATE_ORDER

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = "same",
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        groups: int = 1,
        num_bases: int = 1,
        order: int = 3,
        separated: bool = False,
        trainable: Iterable[str] = GEOMETRY_NAMES,
        init: str = "random",
        sigma_init: float | tuple[float, float] = 1.0,
        mu_init: float | tuple[float, float] = 0.0,
        theta_init: float = 0.0,
        sigma_min: float = 0.1,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("num_bases", num_bases),
                            ("groups", groups)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be divisible by "
                f"groups ({groups}), as in nn.Conv2d"
            )
        if out_channels % num_bases:
            raise ValueError(
                f"out_channels ({out_channels}) must be divisible by num_bases ({num_bases}): "
                "each basis produces out_channels / num_bases outputs"
            )
        bases_per_group(num_bases, groups)  # validates num_bases against groups
        self._set_spatial(kernel_size, stride, padding, dilation, padding_mode)
        self.num_kernels = len(derivative_orders(order))  # validates order
        trainable = (trainable,) if isinstance(trainable, str) else tuple(trainable)
        unknown = [t for t in trainable if t not in GEOMETRY_NAMES]
        if unknown:
            raise ValueError(f"trainable must be a subset of {GEOMETRY_NAMES}, got unknown {unknown}")
        if init not in ("random", "fixed"):
            raise ValueError(f"init must be 'random' or 'fixed', got {init!r}")
        check_impl(impl, separated)
        if not (isinstance(sigma_min, (int, float)) and not isinstance(sigma_min, bool) and 0 < sigma_min < math.inf):
            raise ValueError(f"sigma_min must be a finite float > 0, got {sigma_min!r}")
        self.sigma_init = float_pair("sigma_init", sigma_init)
        if min(self.sigma_init) <= 0:  # never a valid scale, even when init='random' ignores it
            raise ValueError(f"sigma_init must be > 0 (and > sigma_min for init='fixed'), got {sigma_init!r}")
        self.mu_init = float_pair("mu_init", mu_init)
        if not isinstance(theta_init, (int, float)) or isinstance(theta_init, bool) or not math.isfinite(theta_init):
            raise ValueError(f"theta_init must be a finite float (radians), got {theta_init!r}")
        basis_dtype = torch.promote_types(dtype or torch.get_default_dtype(), torch.float32)
        limit = accurate_order(order, self.kernel_size, float(sigma_min), basis_dtype)
        if limit < order:
            raise ValueError(
                f"order {order} is beyond what {str(basis_dtype).removeprefix('torch.')} evaluates on a "
                f"{self.kernel_size[0]}×{self.kernel_size[1]} kernel with sigma_min {sigma_min}: its Gaussian "
                f"derivatives stay finite and within {ORDER_RTOL:.1%} of float64 only up to order {limit} there; use "
                f"order <= {limit} (a larger sigma_min or dtype=torch.float64 allow more)")
        low_sigma = min(self.sigma_init) if init == "fixed" else RANDOM_SIGMA_RANGE[0]
        if low_sigma <= sigma_min:
            raise ValueError(
                f"initial sigma must be > sigma_min ({sigma_min}) > 0, got {low_sigma} "
                f"({'sigma_init' if init == 'fixed' else 'the random range ' + str(RANDOM_SIGMA_RANGE)})"
            )

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.groups = groups
        self.num_bases = num_bases
        self.order = order
        self.separated = separated
        self.trainable = trainable
        self.init = init
        self.theta_init = float(theta_init)
        self.sigma_min = float(sigma_min)
        self.impl = impl

        factory = {"device": device, "dtype": dtype}
        b, n, cin_g = num_bases, self.num_kernels, in_channels // groups
        for name, shape in zip(GEOMETRY_NAMES, ((b, n, 2), (b, n, 2), (b, n))):
            tensor = torch.empty(shape, **factory)
            if name in trainable:
                self.register_parameter(f"{name}_raw", nn.Parameter(tensor))
            else:  # fixed geometry is state, not a parameter (timm: every parameter trains)
                self.register_buffer(f"{name}_raw", tensor)
        if separated:
            self.weight_out = nn.Parameter(torch.empty(out_channels, n, **factory))
            self.weight_in = nn.Parameter(torch.empty(b, n, cin_g, **factory))
        else:
            self.weight = nn.Parameter(torch.empty(out_channels, cin_g, n, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.register_buffer(
            "orders_index", torch.tensor(derivative_orders(order), device=device, dtype=torch.long), persistent=False
        )
        # (key, snapshot of the kernel sources, kernels): see _kernels
        self._cache: tuple[tuple, _Snapshot, tuple[torch.Tensor, ...]] | None = None
        self.reset_parameters()

    # ------------------------------------------------------------------ parameters and views
    @property
    def sigma(self) -> torch.Tensor:
        """``(B, N, 2)`` scales ``(σ1, σ2)``, always ``> sigma_min``."""
        return self.sigma_min + F.softplus(self.sigma_raw)

    @property
    def mu(self) -> torch.Tensor:
        """``(B, N, 2)`` shifts ``(μ1, μ2)`` in taps."""
        return self.mu_raw

    @property
    def theta(self) -> torch.Tensor:
        """``(B, N)`` angles in radians."""
        return self.theta_raw

    @property
    def orders(self) -> list[tuple[int, int]]:
        """Derivative orders ``(p, q)`` of the ``N`` kernels of every basis."""
        return derivative_orders(self.order)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw the geometry (per ``init``), then variance-preserving combination weights and zero bias."""
        if self.sigma_raw.is_meta:  # shapes only (e.g. counting parameters): nothing to draw
            return
        if self.init == "random":
            self.sigma_raw.copy_(inverse_softplus(torch.empty_like(self.sigma_raw).uniform_(*RANDOM_SIGMA_RANGE)
                                                  - self.sigma_min))
            self.mu_raw.uniform_(*RANDOM_MU_RANGE)
            self.theta_raw.uniform_(-math.pi, math.pi)
        else:
            sigma = torch.tensor(self.sigma_init, dtype=self.sigma_raw.dtype, device=self.sigma_raw.device)
            self.sigma_raw.copy_(inverse_softplus(sigma - self.sigma_min).expand_as(self.sigma_raw))
            self.mu_raw.copy_(torch.tensor(self.mu_init, dtype=self.mu_raw.dtype).expand_as(self.mu_raw))
            self.theta_raw.fill_(self.theta_init)
        self._init_combination()
        if self.bias is not None:
            self.bias.zero_()
        self._cache = None

    def _init_combination(self, gain: float = math.sqrt(2.0)) -> None:
        """He-style init that fixes the output second moment for white, unit-variance input.

        With independent zero-mean weights, ``E[out²] = Σ_i E‖W[o,i]‖²`` for white unit input, the sum
        running over the ``in/g`` inputs an output sees (``in`` below stands for that fan-in).
        Drawing ``ω[b,j,i,n] ~ N(0, gain² / (in·N·‖φ^{b,n}‖²))`` gives ``E‖W[o,i]‖² = gain²/in``, so
        ``E[out²] = gain²`` (``gain = √2`` compensates ReLU, as Kaiming init). Separated: each
        ``β[b,n,i] ~ N(0, 1/(in·‖φ^{b,n}‖²))`` makes every intermediate map unit-variance, and
        ``λ ~ N(0, gain²/N)`` gives the same ``E[out²] = gain²``.

        Degenerate kernels (``‖φ‖² ≤ DEGENERATE_NORM_SQ ·`` the basis' largest, e.g. odd derivatives on a
        1×k or 1×1 grid with ``init='fixed'``) contribute nothing now but become ordinary kernels as soon as
        θ or μ move: their weights are drawn as if their norm were the mean of the basis' other kernels, and
        ``N`` above counts only the non-degenerate kernels, so ``E[out²] = gain²`` still holds at init and
        no weight is scaled by ``1/‖φ‖ ≈ ∞``.
        """
        norms_sq = self._compute_basis().pow(2).sum(dim=(-2, -1))  # (B, N)
        degenerate = norms_sq <= DEGENERATE_NORM_SQ * norms_sq.amax(dim=-1, keepdim=True)
        live = (~degenerate).to(norms_sq.dtype)
        n_live = live.sum(dim=-1, keepdim=True).clamp_min(1.0)  # (B, 1); 0 only if the whole basis is zero
        typical = ((norms_sq * live).sum(dim=-1, keepdim=True) / n_live).clamp_min(torch.finfo(norms_sq.dtype).tiny)
        norms_sq = torch.where(degenerate, typical, norms_sq)
        cin, per_basis = self.in_channels // self.groups, self.out_channels // self.num_bases
        if self.separated:
            std_in = (1.0 / (cin * norms_sq)).sqrt().unsqueeze(-1)  # (B, N, 1)
            self.weight_in.copy_(torch.randn_like(self.weight_in) * std_in)
            std_out = (gain / n_live.sqrt()).repeat_interleave(per_basis, dim=0)  # (out, 1)
            self.weight_out.normal_().mul_(std_out)
        else:
            per_output = (cin * n_live * norms_sq).repeat_interleave(per_basis, dim=0)  # (out, N)
            std = (gain**2 / per_output).sqrt().unsqueeze(1)  # (out, 1, N)
            self.weight.copy_(torch.randn_like(self.weight) * std)

    # ------------------------------------------------------------------ kernel generation
    def _compute_basis(self) -> torch.Tensor:
        dtype = torch.promote_types(self.sigma_raw.dtype, torch.float32)
        with torch.autocast(self.sigma_raw.device.type, enabled=False):
            return gaussian_derivative_basis_raw(  # fused into one launch on CUDA (gdzoo.kernels.generator)
                self.sigma_raw.to(dtype), self.mu.to(dtype), self.theta.to(dtype), self.orders_index, self.kernel_size,
                self.sigma_min, max_order=self.order,  # a Python int: no host read of orders_index (sync / graph break)
            )

    def basis(self) -> torch.Tensor:
        """``(B, N, kH, kW)`` sampled kernels ``φ^{b,n}`` (differentiable)."""
        return self._compute_basis()

    def dense_weight(self) -> torch.Tensor:
        """The ``(out, in/groups, kH, kW)`` kernel that ``F.conv2d(..., groups=groups)`` needs to give this layer's
        output."""
        return impl_kernels("dense", self._compute_basis(), *self._weights())[0]

    def _weights(self) -> tuple[torch.Tensor, ...]:
        """The combination weights: ``(ω,)``, or ``(λ, β)`` when separated (eq. 4)."""
        return (self.weight_out, self.weight_in) if self.separated else (self.weight,)

    def select_impl(self) -> str:
        """The execution path used by ``forward``: ``impl``, or the cheapest one when ``'auto'``."""
        return select_impl(self.impl, self.in_channels, self.out_channels, self.num_bases, self.num_kernels,
                           self.kernel_size, self.stride, self.separated, self.groups)

    def _generate(self, impl: str) -> tuple[torch.Tensor, ...]:
        return impl_kernels(impl, self._compute_basis(), *self._weights())

    def _kernel_sources(self) -> tuple[torch.Tensor, ...]:
        """Every tensor the generated kernels depend on (the bias is applied live, so it is not one)."""
        return (self.sigma_raw, self.mu_raw, self.theta_raw, *self._weights())

    def _cache_key(self, impl: str) -> tuple:
        """What must match besides the sources (their values, shapes, dtypes and devices: the snapshot)."""
        return (impl, self.sigma_min, self.kernel_size, self.order, self.groups)

    def _cache_pays(self) -> bool:
        """Off the CPU, with the fused generator, regenerating (two or three launches, no host sync) beats the cache's
        value check (a host-device sync per layer and call); on the CPU the check is microseconds, generation is not."""
        device = self.sigma_raw.device
        return device.type in _HOST_DEVICES or not uses_triton(device)

    def _kernels(self, impl: str) -> tuple[torch.Tensor, ...]:
        """Generated kernels for ``impl``, cached while gradients are off (:meth:`CachedKernelConv._cached`)."""
        return self._cached(self._cache_key(impl), self._kernel_sources(), lambda: self._generate(impl))

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "reparam_conv"):
            return self.reparam_conv(x)
        self._check_input(x)
        impl = self.select_impl()  # gd_conv2d's two steps, with this layer's kernels cached
        return gd_conv2d_with_kernels(x, impl, self._kernels(impl), self.bias, self.conv_spec, self.groups)

    # ------------------------------------------------------------------ steering
    def steered(self, scale: float = 1.0, angle: float = 0.0) -> GDConv2d:
        """A copy of this layer for inputs resized by ``scale`` and rotated by ``angle`` degrees
        (:func:`gdzoo.steer`)."""
        return steer_gdconv(self, scale, angle)

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the Gaussian parameterisation by plain ``nn.Conv2d`` modules with identical output.

        Called by ``timm.utils.reparameterize_model``. Non-separated layers (or separated ones whose
        dense path is cheaper) become one ``nn.Conv2d`` (with the layer's ``groups``); separated layers
        otherwise become the (grouped) 1×1 → depthwise → grouped 1×1 sequence. The GD parameters are
        removed afterwards.
        """
        if hasattr(self, "reparam_conv"):
            return
        impl = self.select_impl()
        factory = {"device": self.sigma_raw.device, "dtype": self.sigma_raw.dtype}
        conv_args = dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                         padding_mode=self.padding_mode)
        if impl == "factorized":
            g, n, cin_g = self.groups, self.num_kernels, self.in_channels // self.groups
            slots = group_bases(self.num_bases, g, self.sigma_raw.device)  # (group, basis) slot -> basis
            bn = len(slots) * n
            mix_in = nn.Conv2d(self.in_channels, bn, 1, groups=g, bias=False, **factory)
            mix_in.weight.copy_(self.weight_in[slots].reshape(bn, cin_g, 1, 1))
            depthwise = nn.Conv2d(bn, bn, self.kernel_size, groups=bn, bias=False, **conv_args, **factory)
            depthwise.weight.copy_(self.basis()[slots].reshape(bn, 1, *self.kernel_size))
            mix_out = nn.Conv2d(bn, self.out_channels, 1, groups=len(slots), bias=self.bias is not None, **factory)
            mix_out.weight.copy_(self.weight_out.reshape(self.out_channels, n, 1, 1))
            conv: nn.Module = nn.Sequential(mix_in, depthwise, mix_out)
            last = mix_out
        else:
            conv = nn.Conv2d(
                self.in_channels, self.out_channels, self.kernel_size, groups=self.groups, bias=self.bias is not None,
                **conv_args, **factory,
            )
            conv.weight.copy_(self.dense_weight())
            last = conv
        if self.bias is not None:
            last.bias.copy_(self.bias)
        fixed_geometry = [f"{g}_raw" for g in GEOMETRY_NAMES if f"{g}_raw" in self._buffers]
        for name in [name for name, _ in self.named_parameters(recurse=False)] + fixed_geometry:
            delattr(self, name)
        self.bias = None
        self._cache = None
        self.reparam_conv = conv

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding!r}, num_bases={self.num_bases}, order={self.order}"
        )
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.separated:
            s += ", separated=True"
        if tuple(self.trainable) != GEOMETRY_NAMES:
            s += f", trainable={tuple(self.trainable)}"
        if self.impl != "auto":
            s += f", impl={self.impl!r}"
        return s


def no_weight_decay_names(module: nn.Module) -> set[str]:
    """Full names of the σ, μ, θ parameters of every GDConv2d in ``module``: the set for timm's ``no_weight_decay()``.

    Any layer class naming its geometry in ``no_decay_geometry`` is included (``DAUConv2d``: σ, μ). Fixed
    geometry (not in ``trainable``) is a buffer, never decayed, and not listed.

    Decay would pull σ towards ``sigma_min + softplus(0)``, μ to the kernel centre and θ to 0: a prior on the
    kernels' geometry, not a penalty on their magnitude, so (like timm's position embeddings) they are left out.

    Examples:
        >>> net = nn.Sequential(GDConv2d(1, 4, 5), nn.ReLU())
        >>> sorted(no_weight_decay_names(net))
        ['0.mu_raw', '0.sigma_raw', '0.theta_raw']
    """
    return {f"{prefix}.{name}_raw" if prefix else f"{name}_raw"
            for prefix, m in module.named_modules()
            for name in getattr(type(m), "no_decay_geometry", ()) if f"{name}_raw" in m._parameters}
