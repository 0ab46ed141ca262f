"""Output-space fit: Adam on a GD layer's parameters to match a free-form convolution's responses on images.

Image statistics weight a filter's taps unequally, which the kernel-space fit ignores; this step corrects for it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .gd_conv import GDConv2d

__all__ = ["output_error", "refine_output_"]


def output_error(gd: GDConv2d, weight: torch.Tensor, bias: torch.Tensor | None, images: torch.Tensor) -> float:
    """``‖gd(x) − conv_ref(x)‖_F / ‖conv_ref(x) − bias‖_F`` with the reference run with gd's spatial settings."""
    with torch.no_grad():
        ref_nobias = _reference(gd, weight, None, images).double()
        ref = ref_nobias if bias is None else ref_nobias + bias.double().view(1, -1, 1, 1)
        return float((gd(images).double() - ref).norm() / ref_nobias.norm().clamp_min(1e-30))


def _reference(gd: GDConv2d, weight: torch.Tensor, bias: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
    spec = gd.conv_spec
    x = images
    padding = spec.padding
    if spec.padding_mode != "zeros":
        x = F.pad(x, spec.explicit_padding(), mode=spec.padding_mode)
        padding = 0
    return F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), spec.stride, padding,
                    spec.dilation, gd.groups)


def refine_output_(
    gd: GDConv2d,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    images: torch.Tensor,
    *,
    steps: int = 200,
    lr: float = 3e-3,
    batch_size: int = 8,
    seed: int = 0,
) -> float:
    """Adam on ``gd``'s parameters (those with ``requires_grad``) to match the reference conv on ``images``.

    Minimises ``‖gd(x) − conv(x; weight, bias)‖² / ‖conv(x; weight)‖²`` over mini-batches of ``images``,
    cosine-decayed ``lr``. Returns the relative output error on all ``images`` afterwards (the best
    state seen is kept, so it never ends worse than it started).
    """
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    params = [p for p in gd.parameters() if p.requires_grad]
    best_err = output_error(gd, weight, bias, images)
    if not params or steps == 0:
        return best_err
    with torch.no_grad():
        targets = _reference(gd, weight, bias, images)
        scale = _reference(gd, weight, None, images).pow(2).mean().clamp_min(1e-30)
    best_state = {k: v.detach().clone() for k, v in gd.state_dict().items()}
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.01)
    gen = torch.Generator().manual_seed(seed)
    was_training = gd.training
    gd.train()
    for step in range(steps):
        idx = torch.randperm(images.shape[0], generator=gen)[:batch_size]
        opt.zero_grad()
        loss = (gd(images[idx]) - targets[idx]).pow(2).mean() / scale
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            err = output_error(gd, weight, bias, images)
            if err < best_err:
                best_err, best_state = err, {k: v.detach().clone() for k, v in gd.state_dict().items()}
    gd.load_state_dict(best_state)
    gd.train(was_training)
    return output_error(gd, weight, bias, images)

