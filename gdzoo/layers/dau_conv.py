"""``DAUConv2d``: a convolution whose filters are sums of displaced, normalised isotropic Gaussians.

The DAU-ConvNet layer (Tabernik et al., "Spatially-Adaptive Filter Units for Deep Neural Networks", CVPR 2018),
the "DAU-ConvNet" column of the paper's Table 1, with σ learned per unit as the paper trained it. The kernels
come from :func:`gdzoo.kernels.displaced_gaussian_units`; the conventions (arguments, ``'same'`` padding by
default, kernel cache, ``reparameterize``) are :class:`~gdzoo.layers.GDConv2d`'s.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels import displaced_gaussian_units
from ._params import inverse_softplus
from .gd_functional import spatial_conv
from .kernel_cache import CachedKernelConv

__all__ = ["DAUConv2d", "DAU_GEOMETRY_NAMES", "MIN_SIGMA_MIN"]

DAU_GEOMETRY_NAMES = ("sigma", "mu")
# Displacements are clamped inside the grid, so some tap is always within 0.5 of a unit's centre on each axis;
# its Gaussian factor exp(−0.5²/2σ²) stays a normal float32 (> 1e-38) for σ ≥ 0.05. Below that the
# normalising sum of a unit between taps could underflow to 0 and the kernel would be 0/0.
MIN_SIGMA_MIN = 0.05
_STATE_ORDER = ("weight", "mu_raw", "sigma_raw", "bias")


class DAUConv2d(CachedKernelConv):
    """Convolution with filters made of ``units`` displaced aggregation units (DAU-ConvNet, CVPR 2018).

    The filter from input channel ``s`` to output ``f`` is
    ``W[f, s] = Σ_k w[f, s, k] · g(x − μ[f, s, k]; σ[f, s, k]) / Σ_x g(x − μ[f, s, k]; σ[f, s, k])``:
    every unit is an isotropic Gaussian normalised to sum 1 over the kernel grid, with its own weight, its
    own displacement ``μ = (μ1, μ2)`` (taps from the kernel centre, horizontal then vertical, as
    :mod:`gdzoo.kernels.basis`) and its own scale ``σ``. The displacements are clamped inside the kernel
    (``|μ1| ≤ (kW−1)/2``, ``|μ2| ≤ (kH−1)/2``) where they are used: ``mu`` is the clamped value, ``mu_raw``
    the free parameter (a coordinate outside the range gets no gradient until it returns).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias, padding_mode:
            as in ``nn.Conv2d`` (``padding`` defaults to ``'same'``).
        units: Gaussian units per filter ``K`` (the paper's Table 1: 10).
        sigma_init: initial σ of every unit (DAU's default 0.5).
        sigma_trainable: learn σ per unit (the paper's Table 1) or keep it fixed. A fixed σ is a (persistent)
            buffer named ``sigma_raw``, so the state-dict keys do not depend on it.
        sigma_min: σ stays above this through ``σ = sigma_min + softplus(raw)``; at least ``MIN_SIGMA_MIN``.

    Init: ``μ ~ U`` over the whole kernel, ``σ = sigma_init``, and He-style weights
    ``w[f, s, k] ~ N(0, 2 / (in · K · ‖unit‖²))`` so that the output second moment is 2 for white, unit-variance
    input (as :meth:`GDConv2d._init_combination`), zero bias.

    Kernel cache: as :class:`~gdzoo.layers.GDConv2d`: with gradients off the dense kernel is reused as long as
    ``w``, ``μ`` and ``σ`` hold the same bits (compared on every call); never while the forward is captured.

    Example:
        >>> conv = DAUConv2d(3, 8, 7, units=10)
        >>> conv(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 8, 16, 16])
        >>> conv.units_kernels().shape, conv.dense_weight().shape
        (torch.Size([8, 3, 10, 7, 7]), torch.Size([8, 3, 7, 7]))
    """

    no_decay_geometry = DAU_GEOMETRY_NAMES  # left out of weight decay (gdzoo.layers.no_weight_decay_names)

    _state_order = _STATE_ORDER

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
        units: int = 10,
        sigma_init: float = 0.5,
        sigma_trainable: bool = True,
        sigma_min: float = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("units", units)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self._set_spatial(kernel_size, stride, padding, dilation, padding_mode)
        if not isinstance(sigma_trainable, bool):
            raise ValueError(f"sigma_trainable must be True or False, got {sigma_trainable!r}")
        if not (isinstance(sigma_min, (int, float)) and not isinstance(sigma_min, bool) and sigma_min >= MIN_SIGMA_MIN):
            raise ValueError(
                f"sigma_min must be a float >= {MIN_SIGMA_MIN} (below, a unit between taps underflows in float32), "
                f"got {sigma_min!r}"
            )
        if not (isinstance(sigma_init, (int, float)) and not isinstance(sigma_init, bool) and sigma_init > sigma_min):
            raise ValueError(f"sigma_init must be a float > sigma_min ({sigma_min}), got {sigma_init!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.units = units
        self.sigma_init = float(sigma_init)
        self.sigma_trainable = sigma_trainable
        self.sigma_min = float(sigma_min)

        factory = {"device": device, "dtype": dtype}
        shape = (out_channels, in_channels, units)
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.mu_raw = nn.Parameter(torch.empty(*shape, 2, **factory))
        if sigma_trainable:
            self.sigma_raw = nn.Parameter(torch.empty(shape, **factory))
        else:
            self.register_buffer("sigma_raw", torch.empty(shape, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self._cache = None
        self.reset_parameters()

    # ------------------------------------------------------------------ parameters and views
    @property
    def mu_limit(self) -> tuple[float, float]:
        """Largest ``|μ1|, |μ2|`` inside the kernel: ``((kW−1)/2, (kH−1)/2)`` taps."""
        return (self.kernel_size[1] - 1) / 2, (self.kernel_size[0] - 1) / 2

    @property
    def sigma(self) -> torch.Tensor:
        """``(out, in, K)`` scales, always ``> sigma_min``."""
        return self.sigma_min + F.softplus(self.sigma_raw)

    @property
    def mu(self) -> torch.Tensor:
        """``(out, in, K, 2)`` displacements ``(μ1, μ2)`` in taps, clamped inside the kernel."""
        (limit1, limit2), raw = self.mu_limit, self.mu_raw  # Python floats: no tensor built per call (no host copy)
        return torch.stack((raw[..., 0].clamp(-limit1, limit1), raw[..., 1].clamp(-limit2, limit2)), dim=-1)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """μ uniform over the kernel, σ = ``sigma_init``, variance-preserving unit weights, zero bias."""
        if self.mu_raw.is_meta:  # shapes only (e.g. counting parameters): nothing to draw
            return
        for axis, limit in enumerate(self.mu_limit):
            self.mu_raw[..., axis].uniform_(-limit, limit)
        sigma = torch.tensor(self.sigma_init - self.sigma_min, dtype=self.sigma_raw.dtype, device=self.sigma_raw.device)
        self.sigma_raw.copy_(inverse_softplus(sigma).expand_as(self.sigma_raw))
        self._init_weight()
        if self.bias is not None:
            self.bias.zero_()
        self._cache = None

    def _init_weight(self, gain: float = math.sqrt(2.0)) -> None:
        """``w ~ N(0, gain² / (in · K · ‖unit‖²))``: with independent zero-mean weights ``E‖W[f, s]‖² = gain²/in``,
        so for white, unit-variance input ``E[out²] = gain²`` (``√2`` compensates ReLU, as Kaiming init)."""
        norms_sq = self.units_kernels().pow(2).sum(dim=(-2, -1))  # (out, in, K); ≥ 1/(kH·kW) since a unit sums to 1
        std = (gain**2 / (self.in_channels * self.units * norms_sq)).sqrt()
        self.weight.copy_(torch.randn_like(self.weight) * std.to(self.weight.dtype))

    # ------------------------------------------------------------------ kernel generation
    def _geometry(self) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.promote_types(self.sigma_raw.dtype, torch.float32)
        return self.sigma.to(dtype), self.mu.to(dtype)

    def units_kernels(self) -> torch.Tensor:
        """``(out, in, K, kH, kW)`` sampled units, each summing to 1 (differentiable)."""
        with torch.autocast(self.mu_raw.device.type, enabled=False):
            sigma, mu = self._geometry()
            return displaced_gaussian_units(sigma, mu, self.kernel_size)

    def dense_weight(self) -> torch.Tensor:
        """The ``(out, in, kH, kW)`` kernel ``Σ_k w · unit`` that ``F.conv2d`` needs to give this layer's output."""
        with torch.autocast(self.mu_raw.device.type, enabled=False):
            sigma, mu = self._geometry()
            vertical, horizontal = displaced_gaussian_units(sigma, mu, self.kernel_size, factors=True)
            return torch.einsum("fsk,fskh,fskw->fshw", self.weight.to(sigma.dtype), vertical, horizontal)

    def _kernel_sources(self) -> tuple[torch.Tensor, ...]:
        """Every tensor the dense kernel depends on (the bias is applied live, so it is not one)."""
        return (self.weight, self.mu_raw, self.sigma_raw)

    def _kernel(self) -> torch.Tensor:
        """The dense kernel, cached while gradients are off (:meth:`CachedKernelConv._cached`)."""
        return self._cached((self.sigma_min, self.kernel_size), self._kernel_sources(), self.dense_weight)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "reparam_conv"):
            return self.reparam_conv(x)
        self._check_input(x)
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        weight = self._kernel().to(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        y = spatial_conv(x, weight, bias, self.conv_spec)
        return y.squeeze(0) if unbatched else y

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the units by one plain ``nn.Conv2d`` with identical output (``timm.utils.reparameterize_model``).

        The DAU parameters (and a fixed σ buffer) are removed afterwards.
        """
        if hasattr(self, "reparam_conv"):
            return
        factory = {"device": self.mu_raw.device, "dtype": self.mu_raw.dtype}
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, stride=self.stride, padding=self.padding,
            dilation=self.dilation, padding_mode=self.padding_mode, bias=self.bias is not None, **factory,
        )
        conv.weight.copy_(self.dense_weight())
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        fixed = ["sigma_raw"] if "sigma_raw" in self._buffers else []
        for name in [name for name, _ in self.named_parameters(recurse=False)] + fixed:
            delattr(self, name)
        self.bias = None
        self._cache = None
        self.reparam_conv = conv

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding!r}, units={self.units}"
        )
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if not self.sigma_trainable:
            s += ", sigma_trainable=False"
        return s
