"""Fitting a GDConv2d to a pretrained free-form convolution: kernel space, then (optionally) output space.

Why: a Gaussian-derivative layer dropped into a pretrained network (paper, Table 2) should start
from the filters it replaces, not from noise. Two steps:

1. **Kernel space** (:func:`fit_gd_kernel`). For a fixed geometry (σ, μ, θ) the best combination
   weights ``c`` are a linear least-squares solve per basis, so the geometry is optimised with ``c``
   eliminated (variable projection): the residual of basis ``b`` only needs the ``(P, P)`` Gram
   matrix ``M_b = Σ t tᵀ`` of its target kernels (``P = kH·kW`` taps), so one step costs the same
   for 3 or 512 input channels. Several random restarts run batched; each basis keeps its best
   restart, then L-BFGS polishes it.
2. **Output space** (:func:`refine_output_`). Adam on every parameter of the layer (geometry that
   is trainable, combination weights, bias) to match the reference convolution's responses on
   sample images: image statistics weight the taps unequally, which the kernel-space fit ignores.

Errors are relative Frobenius norms (see :class:`FitReport`). :func:`fit_gdconv_` runs both on an
existing :class:`GDConv2d`; ``gdzoo.layers.gdify`` builds the layer from an ``nn.Conv2d``.

Where each idea lives (every name stays importable from here): :mod:`.fit_kernel` (step 1),
:mod:`.fit_separated_als` (step 1 for the separated combination of eq. (4)), :mod:`.fit_output` (step 2),
:mod:`.fit_images` (1/f sample images), :mod:`.fit_common` (errors, optimisers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ..threads import intra_op_threads
from .fit_common import RIDGE, relative_error  # noqa: F401  (RIDGE: gdzoo.layers.fit.RIDGE, as before)
from .fit_images import natural_images
from .fit_kernel import GeometryFit, combination_lstsq, fit_gd_kernel, subspace_bound
from .fit_output import output_error, refine_output_
from .fit_separated_als import SeparatedFit, fit_separated
from .gd_conv import GEOMETRY_NAMES, GDConv2d

__all__ = [
    "FitReport",
    "GeometryFit",
    "SeparatedFit",
    "combination_lstsq",
    "fit_gd_kernel",
    "fit_separated",
    "fit_gdconv_",
    "natural_images",
    "output_error",
    "refine_output_",
    "relative_error",
    "subspace_bound",
]


@dataclass
class FitReport:
    """How well a GD layer reproduces the free-form convolution it replaces.

    Attributes:
        kernel_error: ``‖W_gd − W‖_F / ‖W‖_F`` over the whole ``(out, in, kH, kW)`` weight.
        kernel_error_per_channel: the same per output channel (``‖W‖`` of that channel).
        subspace_bound: the smallest ``kernel_error`` any ``N``-kernel basis per group of outputs
            could reach (truncated SVD of each basis's targets): a lower bound on ``kernel_error``.
        output_error: ``‖y_gd − y_ref‖_F / ‖y_ref − bias_ref‖_F`` on the sample images after the
            output-space refinement (``None`` without images). Normalised by the bias-free response so
            a large bias cannot hide a wrong filter.
        output_error_kernel_fit: the same right after the kernel-space fit (before refinement).
    """

    kernel_error: float
    kernel_error_per_channel: list[float]
    subspace_bound: float
    output_error: float | None = None
    output_error_kernel_fit: float | None = None
    settings: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One line for logs and model cards."""
        per = self.kernel_error_per_channel
        s = (
            f"kernel rel. error {self.kernel_error:.4f} (per channel median {sorted(per)[len(per) // 2]:.4f}, "
            f"max {max(per):.4f}; subspace bound {self.subspace_bound:.4f})"
        )
        if self.output_error is not None:
            s += f", output rel. error {self.output_error:.4f} (kernel fit alone {self.output_error_kernel_fit:.4f})"
        return s

    def to_dict(self) -> dict:
        return asdict(self)



def fit_gdconv_(
    gd: GDConv2d,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    images: torch.Tensor | None = None,
    refine_steps: int = 0,
    refine_lr: float = 3e-3,
    restarts: int = 8,
    steps: int = 300,
    polish_steps: int = 100,
    subspace_candidates: int = 32,
    seed: int = 0,
    threads: int | None = None,
) -> FitReport:
    """Fit ``gd`` in place to the free-form ``weight`` / ``bias`` and report the errors.

    ``weight`` is ``(out, in/groups, kH, kW)``, the layout of the (grouped) ``nn.Conv2d`` it replaces: each
    basis is fitted to the kernels of the outputs it serves (one channel's filter for a depthwise layer
    with one basis per channel).

    Kernel space first (:func:`fit_gd_kernel`; a separated layer then refits ``λ``, ``β`` and the geometry
    for eq. (4) with :func:`fit_separated`), bias copied; then, if
    ``images`` are given and ``refine_steps > 0``, :func:`refine_output_`. ``gd``'s stride, padding,
    dilation and padding mode are used for the output comparison. ``threads``: torch's intra-op threads
    during the kernel-space fit (``None``: leave the process's setting; 1 is fastest on a busy CPU, see
    :mod:`gdzoo.threads`).

    Example:
        >>> conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        >>> gd = GDConv2d(3, 8, 3, padding=1, num_bases=2, order=2)
        >>> report = fit_gdconv_(gd, conv.weight, conv.bias, restarts=2, steps=30, polish_steps=0)
        >>> report.kernel_error < 1.0 and report.subspace_bound <= report.kernel_error + 1e-6
        True
    """
    expected = (gd.out_channels, gd.in_channels // gd.groups, *gd.kernel_size)
    if tuple(weight.shape) != expected:
        raise ValueError(f"weight has shape {tuple(weight.shape)}, the GDConv2d expects {expected}")
    if (bias is None) != (gd.bias is None):
        raise ValueError(f"bias mismatch: reference has {'no ' if bias is None else ''}bias, GDConv2d has "
                         f"{'no ' if gd.bias is None else ''}bias")
    if hasattr(gd, "reparam_conv"):
        raise ValueError("gd was reparameterized (plain conv now): fit a fresh GDConv2d")
    weight, bias = weight.detach(), None if bias is None else bias.detach()
    init = (gd.sigma_raw.detach(), gd.mu_raw.detach(), gd.theta_raw.detach())
    with intra_op_threads(threads):
        fit = fit_gd_kernel(
            weight.cpu(), gd.num_bases, gd.order, sigma_min=gd.sigma_min, trainable=tuple(gd.trainable),
            init=None if set(gd.trainable) == set(GEOMETRY_NAMES) else tuple(t.cpu() for t in init),
            restarts=restarts, steps=steps, polish_steps=polish_steps, subspace_candidates=subspace_candidates,
            seed=seed,
        )
        if gd.separated:
            fit = fit_separated(weight.cpu(), fit, gd.order, sigma_min=gd.sigma_min, trainable=tuple(gd.trainable),
                                polish_steps=polish_steps)
    with torch.no_grad():
        gd.sigma_raw.copy_(fit.sigma_raw)
        gd.mu_raw.copy_(fit.mu_raw)
        gd.theta_raw.copy_(fit.theta_raw)
        if gd.separated:
            gd.weight_out.copy_(fit.weight_out)
            gd.weight_in.copy_(fit.weight_in)
        else:
            gd.weight.copy_(fit.weight)
        if bias is not None:
            gd.bias.copy_(bias)
    gd._cache = None
    with torch.no_grad():
        dense = gd.dense_weight().to(weight.dtype)
    report = FitReport(
        kernel_error=float(relative_error(dense, weight)),
        kernel_error_per_channel=[float(e) for e in relative_error(dense, weight, dims=(1, 2, 3))],
        subspace_bound=subspace_bound(weight.cpu(), gd.num_bases, gd.num_kernels),
        settings=dict(num_bases=gd.num_bases, order=gd.order, kernel_size=list(gd.kernel_size),
                      separated=gd.separated, restarts=restarts, steps=steps, polish_steps=polish_steps,
                      refine_steps=refine_steps if images is not None else 0),
    )
    if images is not None:
        images = images.to(device=gd.sigma_raw.device, dtype=gd.sigma_raw.dtype)
        report.output_error_kernel_fit = output_error(gd, weight, bias, images)
        report.output_error = report.output_error_kernel_fit
        if refine_steps:
            report.output_error = refine_output_(gd, weight, bias, images, steps=refine_steps, lr=refine_lr, seed=seed)
            with torch.no_grad():
                dense = gd.dense_weight().to(weight.dtype)
            report.kernel_error = float(relative_error(dense, weight))
            report.kernel_error_per_channel = [float(e) for e in relative_error(dense, weight, dims=(1, 2, 3))]
    return report

