"""``gdify``: replace the convolutions of any timm / torchvision model by GDConv2d, fitted to their weights.

Module surgery only: which convolutions are replaced (``'stem'``, ``'all'``, a regex or names), a
check that each keeps its exact semantics as a GDConv2d (stride, padding, dilation, padding mode,
bias), and the fit of :mod:`gdzoo.layers.fit`. Each new layer keeps its :class:`FitReport` in
``layer.fit_report`` (a plain attribute: not saved in the state dict).

Every replacement is built (and fitted) before any is swapped in, so a layer that fails leaves the
model unchanged. The converted model's ``no_weight_decay()`` also names the new σ, μ, θ, so timm's
optimizer factory keeps them out of weight decay.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from .fit import FitReport, fit_gdconv_
from .gd_conv import GDConv2d, no_weight_decay_names

__all__ = ["NoWeightDecayWithGD", "conv_to_gd", "first_conv_names", "gdify", "report_gd_no_weight_decay",
           "select_convs", "unsupported_reason"]

# The options conv_to_gd hands to the fit: fit_gdconv_'s keyword-only parameters, read from its signature.
FIT_OPTIONS = tuple(name for name, p in inspect.signature(fit_gdconv_).parameters.items() if p.kind is p.KEYWORD_ONLY)


def unsupported_reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot become a GDConv2d with the same output, or ``None`` if it can.

    Example:
        >>> unsupported_reason(nn.Conv2d(3, 8, 3)) is None
        True
        >>> unsupported_reason(nn.Conv2d(8, 8, 3, groups=8)) is None  # depthwise: GDConv2d(groups=8)
        True
        >>> unsupported_reason(nn.Conv2d(8, 8, 1))
        'kernel_size=(1, 1): a 1x1 kernel has a single tap, nothing for a Gaussian-derivative basis to shape'
    """
    if isinstance(module, GDConv2d):
        return "already a GDConv2d"
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return f"{type(module).__name__}: transposed convolutions are not supported"
    if not isinstance(module, nn.Conv2d):
        return f"{type(module).__name__} is not an nn.Conv2d"
    if type(module).forward is not nn.Conv2d.forward:
        return (f"{type(module).__name__} overrides nn.Conv2d.forward (e.g. dynamic 'same' padding or weight "
                "standardisation), which a GDConv2d would not reproduce")
    if tuple(module.kernel_size) == (1, 1):
        return "kernel_size=(1, 1): a 1x1 kernel has a single tap, nothing for a Gaussian-derivative basis to shape"
    if module.weight.is_meta:
        return "weights on the meta device: materialise the model first"
    return None


def first_conv_names(model: nn.Module) -> list[str]:
    """The module names in timm's ``pretrained_cfg['first_conv']`` (a name or a tuple of names); empty if none."""
    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    return [first] if isinstance(first, str) else list(first or ())


def select_convs(model: nn.Module, layers: str | Sequence[str] = "stem") -> list[str]:
    """Names of the modules ``layers`` selects.

    ``'stem'``: ``pretrained_cfg['first_conv']`` (timm) if it names a module, else the first
    ``nn.Conv2d``; ``'all'``: every ``nn.Conv2d`` (outside GDConv2d layers); a string otherwise:
    a regex searched in module names (``re.search``) among ``nn.Conv2d`` / transposed convs; a
    sequence: exact module names.
    """
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.modules.conv._ConvTransposeNd))]
    inside_gd = [n for n, m in model.named_modules() if isinstance(m, GDConv2d)]
    convs = [n for n in convs if not any(n.startswith(g + ".") for g in inside_gd)]
    if not isinstance(layers, str):
        names = list(layers)
        known = dict(model.named_modules())
        missing = [n for n in names if n not in known]
        if missing:
            raise ValueError(f"layers names {missing} are not modules of {type(model).__name__}")
        return names
    if layers == "stem":
        named = dict(model.named_modules())
        firsts = [f for f in first_conv_names(model) if f in named and isinstance(named[f], nn.Conv2d)]
        if firsts:
            return firsts[:1]
        plain = [n for n in convs if isinstance(named[n], nn.Conv2d)]
        if not plain:
            raise ValueError(f"{type(model).__name__} has no nn.Conv2d to use as the stem")
        return plain[:1]
    if layers == "all":
        return convs
    try:
        pattern = re.compile(layers)
    except re.error as e:
        raise ValueError(f"layers must be 'stem', 'all', a regex or a list of module names; {layers!r} is a bad regex: "
                         f"{e}") from e
    chosen = [n for n in convs if pattern.search(n)]
    if not chosen:
        raise ValueError(f"layers={layers!r} matches no convolution; convolutions are e.g. {convs[:5]}")
    return chosen


def conv_to_gd(conv: nn.Conv2d, fit: bool = True, **kwargs: Any) -> tuple[GDConv2d, FitReport | None]:
    """A GDConv2d with ``conv``'s shape and spatial semantics, fitted to its weights when ``fit``.

    ``kwargs``: GDConv2d options (``num_bases``, ``order``, ``separated``, ``trainable``,
    ``sigma_min``, ``impl``, ...) and fit options (:data:`FIT_OPTIONS`: the keyword-only parameters of
    :func:`~gdzoo.layers.fit.fit_gdconv_`, e.g. ``images``, ``refine_steps``, ``restarts``, ``steps``, ``seed``).
    ``groups`` comes from ``conv`` (grouped and depthwise convs keep it); ``num_bases='groups'`` gives one
    basis per channel group, i.e. one per channel for a depthwise conv (each channel's filter fitted on its own).

    Example:
        >>> conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        >>> gd, report = conv_to_gd(conv, num_bases=2, order=2, restarts=2, steps=20, polish_steps=0)
        >>> gd(torch.randn(1, 3, 16, 16)).shape == conv(torch.randn(1, 3, 16, 16)).shape
        True
    """
    reason = unsupported_reason(conv)
    if reason:
        raise ValueError(f"cannot convert {type(conv).__name__} to GDConv2d: {reason}")
    fit_options = {k: kwargs.pop(k) for k in FIT_OPTIONS if k in kwargs}
    for key in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "padding_mode", "bias",
                "groups"):
        if key in kwargs:
            raise ValueError(f"{key} comes from the converted convolution; do not pass it (got {key}={kwargs[key]!r})")
    if kwargs.get("num_bases") == "groups":
        kwargs["num_bases"] = conv.groups
    num_bases = kwargs.get("num_bases", 1)
    if isinstance(num_bases, int) and conv.out_channels % num_bases:
        raise ValueError(
            f"num_bases={num_bases} does not divide the convolution's {conv.out_channels} output channels"
        )
    gd = GDConv2d(
        conv.in_channels, conv.out_channels, tuple(conv.kernel_size), stride=tuple(conv.stride),
        padding=conv.padding if isinstance(conv.padding, str) else tuple(conv.padding),
        dilation=tuple(conv.dilation), bias=conv.bias is not None, padding_mode=conv.padding_mode,
        groups=conv.groups, device=conv.weight.device, dtype=conv.weight.dtype, **kwargs,
    )
    report = fit_gdconv_(gd, conv.weight, conv.bias, **fit_options) if fit else None
    gd.fit_report = report
    gd.train(conv.training)
    return gd, report


@torch.no_grad()
def _layer_inputs(model: nn.Module, names: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input every named layer sees when the (original) model runs on ``images`` (eval mode)."""
    captured: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def grab(_module: nn.Module, args: tuple) -> None:
            captured.setdefault(name, args[0].detach())
        return grab

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    was_training = model.training
    try:
        model.eval()
        model(images)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return captured


class NoWeightDecayWithGD:
    """``model.no_weight_decay`` after gdify: the names the model reported before, plus its GD geometry.

    A plain object holding the model (not a bound method), so ``copy.deepcopy`` (e.g. timm's
    ``ModelEmaV3``) and pickling (``torch.save(model)``) carry it over, pointing at the copy.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        previous = model.__dict__.get("no_weight_decay")  # an instance-level one (not ours) is kept too
        self.previous = previous.previous if isinstance(previous, NoWeightDecayWithGD) else previous

    def __call__(self) -> set[str]:
        own = getattr(type(self.model), "no_weight_decay", None)
        names = set(own(self.model)) if own is not None else set()
        if self.previous is not None:
            names |= set(self.previous())
        return names | no_weight_decay_names(self.model)


def report_gd_no_weight_decay(model: nn.Module) -> None:
    """Make ``model.no_weight_decay()`` (what timm's optimizer factory reads) also name its GD geometry.

    Instance-level; the names the model's class (or an earlier instance-level method) reports are kept.
    Decay would pull σ, μ, θ towards arbitrary values (docs/training.md).
    """
    model.no_weight_decay = NoWeightDecayWithGD(model)


def _build_replacements(
    model: nn.Module, names: list[str], fit: bool, inputs: dict[str, torch.Tensor], gd_kwargs: dict[str, Any]
) -> dict[str, GDConv2d]:
    """One fitted GDConv2d per name, built without touching ``model``; errors name the layer."""
    built = {}
    for name in names:
        module = model.get_submodule(name)
        try:
            built[name], _ = conv_to_gd(module, fit=fit, images=inputs.get(name), **gd_kwargs)
        except (ValueError, TypeError) as e:  # bad options for this layer (e.g. num_bases vs its width)
            kind = TypeError if isinstance(e, TypeError) else ValueError
            raise kind(f"cannot convert {name!r} ({type(module).__name__}) to GDConv2d: {e}") from e
    return built


def _swap_in(model: nn.Module, replacements: dict[str, GDConv2d]) -> None:
    """Replace every named module by its GDConv2d (only called once all were built)."""
    for name, gd in replacements.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, gd)


def gdify(
    model: nn.Module,
    layers: str | Sequence[str] = "stem",
    fit: bool = True,
    strict: bool | None = None,
    **gd_kwargs: Any,
) -> nn.Module:
    """Replace convolutions of ``model`` (in place) by GDConv2d layers; returns ``model``.

    Args:
        model: any ``nn.Module`` (timm, torchvision, ...).
        layers: ``'stem'``, ``'all'``, a regex on module names, or a list of module names
            (see :func:`select_convs`).
        fit: fit each new layer to the weights it replaces (kernel space, then output space if
            ``images`` and ``refine_steps`` are given); ``False`` keeps GDConv2d's random init.
        strict: raise on a selected convolution that cannot be converted (see
            :func:`unsupported_reason`); ``None``: strict except for ``layers='all'``, which skips
            those (1×1, transposed, custom-forward convs) and converts the rest (grouped and depthwise
            convs included: ``num_bases='groups'`` gives each channel group its own basis).
        gd_kwargs: GDConv2d options and fit options, as for :func:`conv_to_gd`. ``images`` are
            *model* inputs: the model runs once on them and every layer is refined on the input it
            received (captured with forward pre-hooks before any replacement).

    All-or-nothing: every new layer is built (and fitted) first, then all are swapped in; on an error
    (which names the layer and the reason) the model is unchanged. Each new layer's
    :class:`FitReport` is in ``layer.fit_report``; ``model.gdify_skipped`` lists the skipped modules
    and why; ``model.no_weight_decay()`` also names the new layers' geometry (σ, μ, θ), so that
    ``timm.optim.create_optimizer_v2`` does not decay it.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
        >>> gdify(net, "all", fit=False, num_bases=2, order=2)[0]
        GDConv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), num_bases=2, order=2)
        >>> net.gdify_skipped
        {'2': 'kernel_size=(1, 1): a 1x1 kernel has a single tap, nothing for a Gaussian-derivative basis to shape'}
        >>> sorted(net.no_weight_decay())
        ['0.mu_raw', '0.sigma_raw', '0.theta_raw']
    """
    if strict is None:
        strict = layers != "all"
    names = select_convs(model, layers)
    skipped: dict[str, str] = {}
    convert = []
    for name in names:
        module = model.get_submodule(name)
        reason = unsupported_reason(module)
        if reason:
            if strict:
                raise ValueError(f"cannot convert {name!r} ({type(module).__name__}) to GDConv2d: {reason}")
            skipped[name] = reason
        else:
            convert.append(name)
    gd_kwargs = dict(gd_kwargs)
    images = gd_kwargs.pop("images", None)
    inputs = _layer_inputs(model, convert, images) if fit and images is not None else {}
    _swap_in(model, _build_replacements(model, convert, fit, inputs, gd_kwargs))
    model.gdify_skipped = skipped
    report_gd_no_weight_decay(model)
    return model
