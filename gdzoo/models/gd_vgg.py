"""``gd_vgg16`` / ``gd_vgg16_bn``: timm's VGG16 whose first convolution is a GDConv2d (paper, Table 2).

Everything except ``features.0`` is timm's own ``timm.models.vgg.VGG`` (its cfgs, head, pre-logits
ConvMlp, feature taps, weight init and torchvision-checkpoint filter). ``features.0`` becomes
``GDConv2d(in_chans, 64, 3, padding=1, num_bases=16, order=3)``: 3×3 like the layer it replaces (so the
rest of an ImageNet VGG16 checkpoint loads unchanged), order 3 (N = 10 kernels per basis, one more than the
9 taps of a 3×3 support) because that spans every 3×3 filter: ImageNet's first layer is reproduced exactly
(order 2, N = 6, leaves ~3 % kernel error, docs/convert.md), and one basis per 4 output channels (16
bases, the authors' own example ratio). Override with ``gd_stem_args=dict(...)``.

Pretrained ``tv_in1k`` weights: ``<org>/gd_vgg16.tv_in1k`` from the HF cache or the Hub where it exists;
otherwise derived once from timm's own ``vgg16.tv_in1k`` (``vgg16_bn.tv_in1k``) by
:func:`gdzoo.models.conversion.convert_model` (every layer copied, the stem fitted) and cached.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.vgg import VGG
from timm.models.vgg import _filter_fn as _vgg_filter_fn
from timm.models.vgg import cfgs as vgg_cfgs

from ..errors import DerivationSourceUnavailable
from ..layers import GDConv2d, no_weight_decay_names
from ._cfg import gd_cfg
from .derived import Derive
from .pretrained import build_gd_model
from .weights_files import WEIGHTS_FILE
from .weights_source import model_and_tag

__all__ = ["DERIVED_FROM", "GdVGG", "GD_STEM_ARGS", "STEM_OUTPUT_TOLERANCE", "derive_gd_vgg"]

_logger = logging.getLogger(__name__)

GD_STEM_ARGS: dict[str, Any] = dict(num_bases=16, order=3)
# gdzoo tag -> the timm weights it is derived from when the Hub has no copy.
DERIVED_FROM: dict[str, str] = {"gd_vgg16.tv_in1k": "vgg16.tv_in1k", "gd_vgg16_bn.tv_in1k": "vgg16_bn.tv_in1k"}
# Download sizes of the sources, for the message when they are missing: 138.4 M float32 parameters each.
SOURCE_SIZES: dict[str, str] = {"vgg16.tv_in1k": "528 MiB", "vgg16_bn.tv_in1k": "528 MiB"}
# A derived stem whose output differs from the original first layer's by more than this is refused.
STEM_OUTPUT_TOLERANCE = 0.01
# Check images for the derivation: natural-like (1/f) images, as many and as large as keeps it fast.
CHECK_IMAGES, CHECK_SIZE = 8, 128


class GdVGG(VGG):
    """timm's :class:`~timm.models.vgg.VGG` with ``features.0`` replaced by a 3×3 GDConv2d."""

    def __init__(self, cfg: list[Any], gd_stem_args: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(cfg, **kwargs)
        first = self.features[0]
        factory = {"device": first.weight.device, "dtype": first.weight.dtype}
        stem_args = {**GD_STEM_ARGS, **(gd_stem_args or {})}
        self.features[0] = GDConv2d(first.in_channels, first.out_channels, 3, padding=1, **stem_args, **factory)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters timm's optimizer factory keeps out of weight decay: the GD kernels' σ, μ, θ."""
        return no_weight_decay_names(self)


def _filter_fn(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm's VGG filter (torchvision ``classifier.*`` -> ``pre_logits`` / ``head``); it takes no model argument."""
    return _vgg_filter_fn(state_dict)


def _load_source(model_tag: str, source_name: str) -> torch.nn.Module:
    """timm's pretrained ``source_name``; raises :class:`DerivationSourceUnavailable` (the Hub's error chained)
    when it is not in the HF cache and cannot be downloaded, saying how to provide it offline."""
    try:
        return timm.create_model(source_name, pretrained=True)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError) as e:
        hub_id = timm.models.get_pretrained_cfg(source_name).hf_hub_id or source_name
        size = SOURCE_SIZES.get(source_name, "")
        reason = ("HF_HUB_OFFLINE=1" if hf_constants.HF_HUB_OFFLINE else
                  f"{type(e).__name__}: {' '.join(str(e).split())[:160]}")
        model, tag = model_and_tag(model_tag)
        raise DerivationSourceUnavailable(
            f"pretrained {model_tag} is derived once from timm's {source_name}{f' ({size})' if size else ''}, which is "
            f"not in the Hugging Face cache ({hf_constants.HF_HUB_CACHE}) and cannot be downloaded ({reason}). "
            f"Provide it offline: download {hub_id} once where the Hub is reachable and copy that HF cache here "
            "(HF_HOME / HF_HUB_CACHE); or convert a local copy of its weights, `gdzoo convert "
            f"{source_name} --to {model} --tag {tag} --checkpoint <{model_and_tag(source_name)[0]}"
            ".safetensors>`, and load the result with timm.create_model('{model}', pretrained=True, "
            f"pretrained_cfg_overlay=dict(file='weights/{model_tag}/{WEIGHTS_FILE}'))"
        ) from e


def derive_gd_vgg(model_tag: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights for ``model_tag`` from timm's pretrained VGG: every layer copied, the GD stem fitted to its first layer.

    The source comes through timm's normal pretrained path (HF cache or Hub). Raises when the fitted
    stem's output differs from the original first layer's by more than ``STEM_OUTPUT_TOLERANCE``.
    Returns the state dict and a record of the source and the errors (written beside the cached file).
    """
    from ..layers.fit import natural_images  # local: fitting is only needed when deriving
    from .conversion import convert_model

    start = time.perf_counter()
    source_name = DERIVED_FROM[model_tag]
    source = _load_source(model_tag, source_name)
    images = natural_images(CHECK_IMAGES, 3, CHECK_SIZE, seed=0)
    model, report = convert_model(source, model_and_tag(model_tag)[0], images=images, refine_steps=0,
                                  fit_options={"threads": 1})  # tiny tensors: one thread (gdzoo.threads)
    stem_error = report.fit.output_error
    seconds = time.perf_counter() - start
    summary = (f"{model_tag}: derived from timm {source_name} in {seconds:.1f} s: stem kernel rel. error "
               f"{report.fit.kernel_error:.2e}, stem output rel. error {stem_error:.2e}, logits rel. error "
               f"{report.logit_error:.2e}, top-1 agreement {report.top1_agreement:.3f}")
    if stem_error is None or stem_error > STEM_OUTPUT_TOLERANCE:
        raise RuntimeError(f"{summary}: the stem output error exceeds {STEM_OUTPUT_TOLERANCE}; refusing to return a "
                           "network that differs from the original. Nothing was cached.")
    _logger.warning(summary)
    source_cfg = source.pretrained_cfg or {}
    record = dict(source=source_cfg.get("hf_hub_id") or source_name, seconds=round(seconds, 2),
                  stem_kernel_error=report.fit.kernel_error, stem_output_error=stem_error,
                  logit_error=report.logit_error, top1_agreement=report.top1_agreement,
                  stem_args=dict(GD_STEM_ARGS))
    return model.state_dict(), record


def _derivation(model_tag: str) -> Derive | None:
    """The derive function of a tag that may be derived, else None."""
    return (lambda: derive_gd_vgg(model_tag)) if model_tag in DERIVED_FROM else None


def _create_gd_vgg(variant: str, pretrained: bool, **kwargs: Any) -> GdVGG:
    """Mirror of ``timm.models.vgg._create_vgg`` (same model cfg, feature cfg and filter) for GdVGG.

    ``build_gd_model`` is timm's ``build_model_with_cfg`` plus gdzoo's GD-stem ``in_chans`` adaptation.
    """
    cfg = variant.split("_")[1]  # 'gd_vgg16_bn' -> 'vgg16'
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3, 4, 5))  # VGG taps stride-1 features too
    return build_gd_model(
        GdVGG,
        variant,
        pretrained,
        model_cfg=vgg_cfgs[cfg],
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        pretrained_filter_fn=_filter_fn,
        derive=_derivation,
        **kwargs,
    )


def _vgg_cfg(model_tag: str, **kwargs: Any) -> dict[str, Any]:
    return gd_cfg(
        model_tag,
        derived=model_tag in DERIVED_FROM,
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,
        interpolation="bilinear",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="features.0",
        classifier="head.fc",
        license="bsd-3-clause",  # as timm's vgg16.tv_in1k, the torchvision weights it starts from
        **kwargs,
    )


default_cfgs = generate_default_cfgs({
    "gd_vgg16.tv_in1k": _vgg_cfg("gd_vgg16.tv_in1k"),
    "gd_vgg16_bn.tv_in1k": _vgg_cfg("gd_vgg16_bn.tv_in1k"),
})


@register_model
def gd_vgg16(pretrained: bool = False, **kwargs: Any) -> GdVGG:
    """VGG16 (configuration "D") with a Gaussian-derivative first layer."""
    return _create_gd_vgg("gd_vgg16", pretrained=pretrained, **kwargs)


@register_model
def gd_vgg16_bn(pretrained: bool = False, **kwargs: Any) -> GdVGG:
    """VGG16 with batch normalisation and a Gaussian-derivative first layer."""
    model_args = dict(norm_layer=torch.nn.BatchNorm2d, **kwargs)
    return _create_gd_vgg("gd_vgg16_bn", pretrained=pretrained, **model_args)
