"""Convert a pretrained free-form timm model into its gdzoo GD twin: copy the weights, fit the GD stem, check logits.

One code path for ``gdzoo convert vgg16.tv_in1k --to gd_vgg16 --tag tv_in1k`` (paper, Table 2) and for
``gd_vgg16.tv_in1k`` weights derived on first use by ``pretrained=True``:
every tensor except the stem is copied unchanged; the stem (``pretrained_cfg['first_conv']``) is
fitted by :func:`gdzoo.layers.fit.fit_gdconv_` (kernel space, then output space on sample images);
both models then run on the same images and the logits are compared.
:func:`gdzoo.hub.convert.export_converted` writes the Hub folder with the errors in its model card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import timm
import torch
import torch.nn as nn

from ..layers import GDConv2d
from ..layers.fit import FitReport, fit_gdconv_, natural_images, relative_error
from ..layers.gdify import first_conv_names, unsupported_reason

__all__ = ["ConvertReport", "convert_model", "stem_name"]


@dataclass
class ConvertReport:
    """What the conversion changed and how closely the GD model follows the original."""

    source: str
    target: str
    stem: str
    fit: FitReport
    logit_error: float  # ‖logits_gd − logits_ref‖_F / ‖logits_ref‖_F on the check images
    top1_agreement: float  # fraction of check images with the same arg-max class
    img_size: int
    num_images: int

    def summary(self) -> str:
        return (
            f"{self.source} -> {self.target}: stem {self.stem}: {self.fit.summary()}; logits rel. error "
            f"{self.logit_error:.4f}, top-1 agreement {self.top1_agreement:.3f} "
            f"({self.num_images} images at {self.img_size}x{self.img_size})"
        )

    def card_section(self) -> str:
        """Markdown for the model card: how the weights were made and how close they are."""
        f = self.fit
        s = f.settings
        rows = [
            ("stem kernel rel. error ‖W_gd − W‖/‖W‖", f"{f.kernel_error:.4f}"),
            ("stem kernel rel. error, per channel (median / max)",
             f"{sorted(f.kernel_error_per_channel)[len(f.kernel_error_per_channel) // 2]:.4f} / "
             f"{max(f.kernel_error_per_channel):.4f}"),
            ("best possible with this basis size (SVD bound)", f"{f.subspace_bound:.4f}"),
        ]
        if f.output_error is not None:
            rows += [("stem output rel. error (after refinement)", f"{f.output_error:.4f}"),
                     ("stem output rel. error (kernel fit only)", f"{f.output_error_kernel_fit:.4f}")]
        rows += [("logits rel. error", f"{self.logit_error:.4f}"), ("top-1 agreement", f"{self.top1_agreement:.3f}")]
        lines = [
            f"Converted from `{self.source}`: every weight is copied except the first convolution `{self.stem}`, "
            f"replaced by a Gaussian-derivative layer (order {s.get('order')}, {s.get('num_bases')} bases, "
            f"{'separated' if s.get('separated') else 'non-separated'}) fitted to the pretrained filters: "
            "least squares in kernel space with the geometry (σ, μ, θ) optimised jointly, then "
            f"{s.get('refine_steps', 0)} Adam steps in output space. Checked on {self.num_images} "
            f"natural-like (1/f noise) images at {self.img_size}×{self.img_size}.",
            "",
            "| conversion check | value |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in rows],
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stem_name(model: nn.Module) -> str:
    """The module named by ``pretrained_cfg['first_conv']`` (the first one if several)."""
    names = first_conv_names(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no pretrained_cfg['first_conv']: cannot tell which layer is the "
                         "stem")
    return names[0]


def _copy_all_but_stem(source: nn.Module, target: nn.Module, stem: str) -> None:
    src, tgt = source.state_dict(), target.state_dict()

    def body(keys: Any) -> set[str]:
        return {k for k in keys if not k.startswith(stem + ".")}

    missing, extra = sorted(body(tgt) - body(src)), sorted(body(src) - body(tgt))
    shapes = sorted(k for k in body(tgt) & body(src) if src[k].shape != tgt[k].shape)
    if missing or extra or shapes:
        raise ValueError(
            "source and target differ outside the stem "
            f"{stem!r}: missing in source {missing[:5]}, only in source {extra[:5]}, "
            f"shape mismatch {[(k, tuple(src[k].shape), tuple(tgt[k].shape)) for k in shapes[:5]]}"
        )
    target.load_state_dict({k: src[k] for k in body(tgt)}, strict=False)


def _check_stem_semantics(conv: nn.Module, gd: GDConv2d, stem: str) -> None:
    reason = unsupported_reason(conv)
    if reason:
        raise ValueError(f"source stem {stem!r} cannot be fitted by a GDConv2d: {reason}")
    ours = (gd.in_channels, gd.out_channels, tuple(gd.kernel_size), tuple(gd.stride), gd.dilation, gd.padding_mode)
    theirs = (conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.dilation),
              conv.padding_mode)
    pad_ok = gd.padding == (conv.padding if isinstance(conv.padding, str) else tuple(conv.padding))
    if ours != theirs or not pad_ok or (gd.bias is None) != (conv.bias is None):
        raise ValueError(
            f"stem {stem!r}: target GDConv2d (in, out, kernel, stride, dilation, padding_mode)={ours}, padding="
            f"{gd.padding} differs from the source conv {theirs}, padding={conv.padding}"
        )


@torch.no_grad()
def _compare_logits(source: nn.Module, target: nn.Module, images: torch.Tensor,
                    batch_size: int = 8) -> tuple[float, float]:
    ref, ours = [], []
    for chunk in images.split(batch_size):
        ref.append(source(chunk).double())
        ours.append(target(chunk).double())
    ref_t, ours_t = torch.cat(ref), torch.cat(ours)
    return float(relative_error(ours_t, ref_t)), float((ref_t.argmax(-1) == ours_t.argmax(-1)).double().mean())


def convert_model(
    source: nn.Module,
    target: str,
    *,
    source_name: str | None = None,
    images: torch.Tensor | None = None,
    num_images: int = 16,
    img_size: int | None = None,
    refine_steps: int = 200,
    seed: int = 0,
    fit_options: dict[str, Any] | None = None,
    **create_kwargs: Any,
) -> tuple[nn.Module, ConvertReport]:
    """Build ``target`` (a gdzoo model name) from the pretrained ``source`` model.

    Args:
        source: a timm model whose ``pretrained_cfg['first_conv']`` is an ``nn.Conv2d``.
        target: registered gdzoo model with a GDConv2d stem at the same place, e.g. ``'gd_vgg16'``.
        source_name: name recorded in the report (default: the source's pretrained_cfg architecture.tag).
        images: check / refinement images ``(N, C, H, W)``, already normalised as the model expects;
            default: ``num_images`` natural-like images (:func:`natural_images`) at ``img_size``
            (default the source's ``pretrained_cfg['input_size']``).
        refine_steps: output-space Adam steps on the stem (0: kernel-space fit only).
        fit_options: extra options for :func:`gdzoo.layers.fit.fit_gdconv_` (restarts, steps, ...).
        create_kwargs: for ``timm.create_model(target, ...)``; ``num_classes`` defaults to the source's.

    Returns:
        The GD model (eval mode) and its :class:`ConvertReport`.
    """
    stem = stem_name(source)
    conv = source.get_submodule(stem)
    create_kwargs.setdefault("num_classes", getattr(source, "num_classes", None) or 1000)
    create_kwargs.setdefault("in_chans", conv.in_channels)
    model = timm.create_model(target, pretrained=False, **create_kwargs)
    target_stem = stem_name(model)
    if target_stem != stem:
        raise ValueError(f"target {target} has its stem at {target_stem!r}, the source at {stem!r}")
    gd = model.get_submodule(stem)
    if not isinstance(gd, GDConv2d):
        raise ValueError(f"target {target}'s stem {stem!r} is a {type(gd).__name__}, not a GDConv2d")
    _check_stem_semantics(conv, gd, stem)
    _copy_all_but_stem(source, model, stem)

    if images is None:
        size = img_size or int((source.pretrained_cfg or {}).get("input_size", (3, 224, 224))[-1])
        images = natural_images(num_images, conv.in_channels, size, seed=seed)
    if images.dim() != 4 or images.shape[1] != conv.in_channels:
        raise ValueError(f"images must be (N, {conv.in_channels}, H, W), got shape {tuple(images.shape)}")
    images = images.to(device=conv.weight.device, dtype=conv.weight.dtype)
    report = fit_gdconv_(gd, conv.weight, conv.bias, images=images, refine_steps=refine_steps, seed=seed,
                         **(fit_options or {}))
    source.eval()
    model.eval()
    logit_error, agreement = _compare_logits(source, model, images)
    cfg = getattr(source, "pretrained_cfg", None) or {}
    name = source_name or ".".join(p for p in (cfg.get("architecture"), cfg.get("tag")) if p) or type(source).__name__
    return model, ConvertReport(name, target, stem, report, logit_error, agreement, int(images.shape[-1]),
                                int(images.shape[0]))
