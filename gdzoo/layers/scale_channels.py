"""Scale channels from steering: one GD model run at several input scales at once, pooled over the scales
(:class:`ScaleChannels`); the same over input rotations (:class:`OrientationChannels`).

Channel ``s`` is ``gdzoo.steer(model, scale=s)`` (the model for inputs resized by ``s``) with its geometry
computed *at forward time* from the base model's tensors, so every channel is a view of the same σ, μ, θ and
weights and the whole module trains end to end (gradients of all channels reach the base parameters).
:func:`~gdzoo.layers.steer.steer_gdconv` re-poses a GD layer for scale ``s`` as

* ``σ' = s·σ`` with ``sigma_min' = s·sigma_min``: ``sigma_raw' = softplus⁻¹(s·softplus(sigma_raw))``;
* ``μ' = s·μ`` (``mu_raw' = s·mu_raw``), ``θ`` unchanged;
* ``w'_n = s^{p_n+q_n}·w_n`` (``weight`` or, separated, ``weight_out``);
* a kernel grid of the smallest size ``≥ s·k`` with the parity of ``k`` and the matching centred padding.

The last item changes no tensor: each channel keeps a structural copy made by ``steer`` (its kernel sizes,
paddings and ``sigma_min``) and is run with :func:`torch.func.functional_call`, its tensors replaced by the
base model's, re-posed as above (differentiable maps). Pointwise layers, norms, activations and pooling are
shared unchanged, so a channel costs one forward of its steered model, which grows with ``s`` (its kernels have
≈ ``s²`` as many taps; with ``window``, its frame ≈ ``s²`` as many pixels): docs/scale.md has measured costs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from ._params import inverse_softplus
from .gd_conv import GDConv2d
from .steer import steer, steering_problems

__all__ = ["ABOVE_ONE", "BELOW_ONE", "POOLS", "WHERES", "OrientationChannels", "ScaleChannels", "centre_crop",
           "centre_pad", "pool_channels", "steered_tensors"]

POOLS = ("max", "mean", "logsumexp")
WHERES = ("logits", "features")
BELOW_ONE = ("steer", "resize")
ABOVE_ONE = ("steer", "resize")
_PREFIX = "model."


def steered_tensors(layer: GDConv2d, scale: float, prefix: str = "", angle: float = 0.0) -> dict[str, torch.Tensor]:
    """The tensors of ``steer_gdconv(layer, scale, angle)`` as differentiable functions of ``layer``'s own tensors
    (``θ' = θ − angle``, in degrees).

    Computed in float64 (as ``steer_gdconv``) and cast back, so they equal the steered copy's to rounding.

    Example:
        >>> from gdzoo.layers.steer import steer_gdconv
        >>> layer = GDConv2d(2, 4, 7, num_bases=2, order=2)
        >>> mapped = steered_tensors(layer, 2.0)
        >>> torch.allclose(mapped["sigma_raw"], steer_gdconv(layer, 2.0).sigma_raw, atol=1e-6)
        True
    """
    s = float(scale)
    raw = layer.sigma_raw
    sigma_raw = inverse_softplus(F.softplus(raw.double()) * s).to(raw.dtype)
    gain = torch.as_tensor(s, dtype=torch.float64, device=raw.device).pow(layer.orders_index.sum(dim=1).double())
    theta_raw = layer.theta_raw - math.radians(angle) if angle else layer.theta_raw
    out = {"sigma_raw": sigma_raw, "mu_raw": (layer.mu_raw.double() * s).to(layer.mu_raw.dtype),
           "theta_raw": theta_raw}
    name = "weight_out" if layer.separated else "weight"
    weight = getattr(layer, name)
    # N is the last dim of both weight (out, in/g, N) and weight_out (out, N)
    out[name] = (weight.double() * gain).to(weight.dtype)
    return {prefix + k: v for k, v in out.items()}


def _listed(problems: dict[str, str]) -> str:
    return "; ".join(f"{name}: {reason}" for name, reason in problems.items())


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    if isinstance(scales, (int, float)) or not isinstance(scales, Sequence) or len(scales) == 0:
        raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {scales!r}")
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
            raise ValueError(f"every scale must be a finite number > 0, got {s!r} in {scales!r}")
    if len(set(map(float, scales))) != len(scales):
        raise ValueError(f"scales must not repeat, got {scales!r}")
    return tuple(float(s) for s in scales)


class _Features(nn.Module):
    """``model.forward_features`` as a module's forward, so functional_call can run it (names prefixed ``model.``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class ScaleChannels(nn.Module):
    """Steered copies of a GD model, one per input scale, sharing its parameters, pooled over the scales.

    Args:
        model: a steerable model (every GDConv2d stride 1 with centred padding, other convolutions 1×1:
            :func:`gdzoo.steer`'s rule); anything else raises a ``ValueError`` naming the layers.
        scales: the input resize factors the channels are steered for (``1.0``: the model itself).
        pool: how channels are combined: ``'max'``, ``'mean'`` or ``'logsumexp'`` (a smooth max; not shifted
            by ``log n``, which softmax and argmax ignore).
        where: ``'logits'`` pools the model outputs. ``'features'`` pools the unpooled ``forward_features``
            maps of the channels (the same size for every channel: steering keeps strides) and runs the base
            model's ``forward_head`` once on them; it needs timm's ``forward_features``/``forward_head``.
        channel_dropout: in training, each channel is dropped with this probability (not computed); at least
            one is always kept (a random one when all are dropped). Off in eval.
        window: the side of the images the model was trained on, for inputs on a larger canvas: channel ``s``
            then runs on the centred crop of side ≈ ``s·window`` (the training frame rescaled, with the input's
            parity so it stays exactly centred; the whole input where that is larger). A model with global
            average pooling learned its averages over its training frame, not over a mostly empty canvas.
            Only with ``where='logits'`` (the channels' feature maps would differ in size).
        fill: with ``window``, a channel whose frame is larger than the input gets the input padded to its frame
            with this value (the background in the model's input units, e.g. ``-mean/std`` for a black one), so a
            plain ``window × window`` image is seen as on a canvas; None (default): the channel runs on the input
            as it is (its convolutions then zero-pad it, which is not the background once inputs are normalised).
        below_one: how channels with ``s < 1`` are made. ``'steer'`` shrinks the kernels like the others (σ can
            then fall below a pixel and alias); ``'resize'`` runs the unsteered model on the input enlarged by
            ``1/s`` (bicubic; with ``window``: the channel's crop resized to ``window × window``), the classic
            scale channel. Only with ``where='logits'``.
        above_one: how channels with ``s > 1`` are made. ``'steer'`` enlarges the kernels (exact for the continuous
            kernels; a channel then costs ≈ ``s⁴`` times the plain model with ``window``); ``'resize'`` runs the
            unsteered model on the input shrunk by ``1/s`` (bicubic, antialiased; with ``window``: the channel's
            frame shrunk to ``window × window``), so every channel costs about one plain forward. Only with
            ``where='logits'``.

    ``state_dict()`` has exactly the base model's keys, so its weights load into the plain model and back.
    Norm layers with running statistics update them once per channel in training. Gradient checkpointing in
    the base model is refused in training (its recomputation would run the unsteered geometry). Each channel keeps
    a structural copy, rebuilt when the model's tensor names or shapes change (e.g. ``reset_classifier``); other
    changes of structure (a new drop rate, swapped activations) need a new ScaleChannels.

    Example:
        >>> import timm, gdzoo
        >>> net = gdzoo.ScaleChannels(timm.create_model('gd_fmnist'), scales=(1.0, 2.0), pool='max').eval()
        >>> net(torch.randn(2, 1, 56, 56)).shape, net.channel_logits(torch.randn(2, 1, 56, 56)).shape
        (torch.Size([2, 10]), torch.Size([2, 2, 10]))
    """

    def __init__(
        self,
        model: nn.Module,
        scales: Sequence[float] = (1.0, 2**0.5, 2.0),
        pool: str = "max",
        where: str = "logits",
        channel_dropout: float = 0.0,
        window: int | None = None,
        below_one: str = "steer",
        fill: float | None = None,
        above_one: str = "steer",
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if where not in WHERES:
            raise ValueError(f"where must be one of {WHERES}, got {where!r}")
        if where == "features" and not (callable(getattr(model, "forward_features", None))
                                        and callable(getattr(model, "forward_head", None))):
            raise ValueError(f"where='features' needs a model with forward_features and forward_head (timm's API); "
                             f"{type(model).__name__} has not both: use where='logits'")
        if isinstance(channel_dropout, bool) or not isinstance(channel_dropout, (int, float)) \
                or not 0.0 <= channel_dropout < 1.0:
            raise ValueError(f"channel_dropout must be a probability in [0, 1), got {channel_dropout!r}")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be None or a positive int (the training images' side), got {window!r}")
        if fill is not None and (window is None or isinstance(fill, bool) or not isinstance(fill, (int, float))
                                 or not math.isfinite(fill)):
            raise ValueError(f"fill must be None or a finite number, and needs window; got fill={fill!r}, "
                             f"window={window!r}")
        if below_one not in BELOW_ONE:
            raise ValueError(f"below_one must be one of {BELOW_ONE}, got {below_one!r}")
        if above_one not in ABOVE_ONE:
            raise ValueError(f"above_one must be one of {ABOVE_ONE}, got {above_one!r}")
        for option, value in (("below_one", below_one), ("above_one", above_one)):
            if value == "resize" and where == "features":
                raise ValueError(f"{option}='resize' needs where='logits': resized channels give other feature map "
                                 f"sizes")
        if window is not None and where == "features":
            raise ValueError("window needs where='logits': cropped channels give feature maps of different sizes")
        problems = steering_problems(model)
        if problems:
            raise ValueError(f"{type(model).__name__} cannot be run in scale channels: {_listed(problems)}")
        self.scales = _check_scales(scales)
        self.transforms: tuple[tuple[float, float], ...] = tuple((s, 0.0) for s in self.scales)  # (scale, angle)
        self.pool, self.where, self.channel_dropout, self.window = pool, where, float(channel_dropout), window
        self.below_one, self.above_one = below_one, above_one
        self.fill = None if fill is None else float(fill)
        self.model = model
        self._shells: dict[tuple[float, float], tuple[tuple, nn.Module]] = {}
        self.register_state_dict_post_hook(_strip_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)

    # ------------------------------------------------------------------ channels
    def _signature(self) -> tuple:
        """What a structural copy must still match: every tensor's name and shape."""
        tensors = list(self.model.named_parameters()) + list(self.model.named_buffers())
        return tuple((name, tuple(t.shape)) for name, t in tensors)

    def _shell(self, transform: tuple[float, float]) -> nn.Module:
        """``steer(model, scale, angle)``'s structure (its tensors are never used: forward replaces all of them)."""
        signature = self._signature()
        cached = self._shells.get(transform)
        if cached is None or cached[0] != signature:
            problems = steering_problems(self.model)
            if problems:  # e.g. reparameterized (gdzoo export) after this module was made
                raise ValueError(f"the channel (scale {transform[0]:g}, angle {transform[1]:g}) needs steering, which "
                                 f"the model no longer allows ({_listed(problems)}); only the scale-1 channel and "
                                 f"resized channels (below_one/above_one='resize') run on such a model")
            with torch.no_grad():
                shell = steer(self.model, scale=transform[0], angle=transform[1])
            cached = self._shells[transform] = (signature, shell)
        shell = cached[1]
        if shell.training != self.model.training:  # train() clears the GD layers' kernel caches: only on a change
            shell.train(self.model.training)
        return shell

    def _tensors(self, transform: tuple[float, float]) -> dict[str, torch.Tensor]:
        """The base model's parameters and buffers, those of its GD layers re-posed for ``(scale, angle)``."""
        tensors = dict(self.model.named_parameters(remove_duplicate=False))
        tensors.update(self.model.named_buffers(remove_duplicate=False))
        for name, module in self.model.named_modules():
            if isinstance(module, GDConv2d):
                tensors.update(steered_tensors(module, transform[0], f"{name}." if name else "", transform[1]))
        return tensors

    def _run(self, transform: tuple[float, float], x: torch.Tensor, features: bool) -> torch.Tensor:
        scale, angle = transform
        if self.window is not None:
            x = centre_crop(x, scale * self.window)
            if self.fill is not None:
                x = centre_pad(x, scale * self.window, self.fill)
        if (scale < 1.0 and self.below_one == "resize") or (scale > 1.0 and self.above_one == "resize"):
            size = (self.window,) * 2 if self.window is not None else tuple(round(n / scale) for n in x.shape[-2:])
            return self.model(F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False))
        if scale == 1.0 and angle == 0.0:
            return self.model.forward_features(x) if features else self.model(x)
        shell = self._shell(transform)
        if features:
            wrapped = _Features(shell)
            tensors = {_PREFIX + k: v for k, v in self._tensors(transform).items()}
            return functional_call(wrapped, tensors, (x,))
        return functional_call(shell, self._tensors(transform), (x,))

    def active_channels(self) -> list[int]:
        """Indices of the channels this forward runs: all in eval; in training, scale-channel dropout's draw."""
        n = len(self.transforms)
        if not self.training or self.channel_dropout == 0.0:
            return list(range(n))
        keep = torch.rand(n) >= self.channel_dropout
        if not keep.any():
            keep[torch.randint(n, (1,))] = True
        return [i for i in range(n) if keep[i]]

    def channel_outputs(self, x: torch.Tensor, channels: Sequence[int] | None = None,
                        features: bool = False) -> torch.Tensor:
        """``(N, C, ...)``: each channel's output (``features``: its ``forward_features``), unpooled."""
        if self.training and torch.is_grad_enabled() and getattr(self.model, "grad_checkpointing", False):
            raise RuntimeError("ScaleChannels cannot train a model with gradient checkpointing on (its recomputation "
                               "would run the unsteered geometry): call model.set_grad_checkpointing(False)")
        channels = list(range(len(self.transforms))) if channels is None else list(channels)
        return torch.stack([self._run(self.transforms[i], x, features) for i in channels], dim=1)

    def channel_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, classes)``: every channel's logits (all channels, no dropout), e.g. to choose scales."""
        return self.channel_outputs(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.channel_outputs(x, self.active_channels(), features=self.where == "features")
        pooled = pool_channels(outputs, self.pool)
        return self.model.forward_head(pooled) if self.where == "features" else pooled

    def extra_repr(self) -> str:
        scales = ", ".join(f"{s:g}" for s in self.scales)
        drop = f", channel_dropout={self.channel_dropout:g}" if self.channel_dropout else ""
        window = f", window={self.window}" if self.window is not None else ""
        below = ", below_one='resize'" if self.below_one == "resize" else ""
        below += ", above_one='resize'" if self.above_one == "resize" else ""
        fill = f", fill={self.fill:g}" if self.fill is not None else ""
        return f"scales=({scales}), pool={self.pool!r}, where={self.where!r}{drop}{window}{below}{fill}"


class OrientationChannels(ScaleChannels):
    """Steered copies of a GD model for inputs rotated by ``angles`` (degrees), sharing its parameters, pooled.

    Channel ``a`` is ``gdzoo.steer(model, angle=a)`` (``θ' = θ − a``) computed at forward time from the base
    model's tensors, as :class:`ScaleChannels` does for scales; every channel runs on the whole input. With
    ``angles`` a multiple of 90° apart and a model whose other layers commute with 90° rotations (pointwise
    layers, norms, 2×2 pooling of even maps, global pooling), the pooled output is exactly invariant to 90°
    rotations of the input; other angles are exact for the continuous kernels only (truncation, the grid).

    Example:
        >>> import timm, gdzoo
        >>> net = gdzoo.OrientationChannels(timm.create_model('gd_fmnist'), angles=(0, 90, 180, 270)).eval()
        >>> x = torch.randn(2, 1, 28, 28)
        >>> torch.allclose(net(torch.rot90(x, 1, dims=(-2, -1))), net(x), atol=1e-4)
        True
    """

    def __init__(self, model: nn.Module, angles: Sequence[float] = (0.0, 90.0, 180.0, 270.0), pool: str = "max",
                 where: str = "logits", channel_dropout: float = 0.0) -> None:
        super().__init__(model, scales=(1.0,), pool=pool, where=where, channel_dropout=channel_dropout)
        self.angles = _check_angles(angles)
        self.transforms = tuple((1.0, a) for a in self.angles)

    def extra_repr(self) -> str:
        angles = ", ".join(f"{a:g}" for a in self.angles)
        drop = f", channel_dropout={self.channel_dropout:g}" if self.channel_dropout else ""
        return f"angles=({angles}), pool={self.pool!r}, where={self.where!r}{drop}"


def _check_angles(angles: Sequence[float]) -> tuple[float, ...]:
    if isinstance(angles, (int, float)) or not isinstance(angles, Sequence) or len(angles) == 0:
        raise ValueError(f"angles must be a non-empty sequence of numbers (degrees), got {angles!r}")
    for a in angles:
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
            raise ValueError(f"every angle must be a finite number of degrees, got {a!r} in {angles!r}")
    if len({float(a) % 360.0 for a in angles}) != len(angles):
        raise ValueError(f"angles must not repeat (modulo 360), got {angles!r}")
    return tuple(float(a) for a in angles)


def centre_crop(x: torch.Tensor, side: float) -> torch.Tensor:
    """The centred crop of ``x`` whose sides are the integers nearest ``side`` with the parity of ``x``'s (so the
    crop's centre is exactly the input's), at least 1 and at most the input's.

    Example:
        >>> centre_crop(torch.zeros(1, 1, 72, 72), 28 * 2**0.5).shape  # 39.6 → 40 (even, as 72)
        torch.Size([1, 1, 40, 40])
    """
    crops = []
    for size in x.shape[-2:]:
        n = min(size, max(_centred_side(side, size), 2 - size % 2))
        crops.append(slice((size - n) // 2, (size - n) // 2 + n))
    return x[..., crops[0], crops[1]]


def _centred_side(side: float, size: int) -> int:
    """The integer nearest ``side`` with the parity of ``size`` (so a crop or pad of ``size`` to it stays centred)."""
    return round((side - size % 2) / 2) * 2 + size % 2


def centre_pad(x: torch.Tensor, side: float, value: float) -> torch.Tensor:
    """``x`` padded equally on every side with ``value`` to the integers nearest ``side`` with the parity of ``x``'s
    sides (as :func:`centre_crop` chooses them); sides already that large are left as they are.

    Example:
        >>> centre_pad(torch.zeros(1, 1, 28, 28), 28 * 2**0.5, -1.0).shape  # 39.6 → 40 (even, as 28)
        torch.Size([1, 1, 40, 40])
    """
    pads = []
    for size in reversed(x.shape[-2:]):  # F.pad: the last dim first
        extra = max(0, _centred_side(side, size) - size) // 2
        pads += [extra, extra]
    return F.pad(x, pads, value=value) if any(pads) else x


def pool_channels(outputs: torch.Tensor, pool: str) -> torch.Tensor:
    """Pool ``(N, C, ...)`` over the channel dim 1 by ``pool`` (one of :data:`POOLS`)."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if pool == "max":
        return outputs.amax(dim=1)
    if pool == "mean":
        return outputs.mean(dim=1)
    return torch.logsumexp(outputs, dim=1)


def _strip_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict hook: ``<prefix>model.<key>`` → ``<prefix><key>``: the base model's own keys."""
    start = prefix + _PREFIX
    for key in [k for k in state_dict if k.startswith(start)]:
        state_dict[prefix + key[len(start):]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in [k for k in metadata if k == start[:-1] or k.startswith(start)]:
            new = prefix + key[len(start):] if key.startswith(start) else prefix[:-1]
            metadata[new] = metadata.pop(key)


def _add_prefix(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: the base model's keys ``<prefix><key>`` → ``<prefix>model.<key>``."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        state_dict[prefix + _PREFIX + key[len(prefix):]] = state_dict.pop(key)
