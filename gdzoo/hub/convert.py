"""Write a converted GD model (:func:`gdzoo.models.conversion.convert_model`) as a Hub folder with its errors."""

from __future__ import annotations

import os

import torch.nn as nn

from ..models.conversion import ConvertReport, convert_model, stem_name
from .export import export_hub_folder
from .layout import HubFolder

__all__ = ["ConvertReport", "convert_model", "export_converted", "stem_name"]


def export_converted(
    model: nn.Module,
    report: ConvertReport,
    tag: str,
    root: str | os.PathLike = "weights",
    *,
    org: str | None = None,
    command: str | None = None,
    license: str | None = None,
    datasets: tuple[str, ...] = ("imagenet-1k",),
) -> HubFolder:
    """``weights/<target>.<tag>/`` (a Hub folder, ``gdzoo.hub.layout.REPO_FILES``) with the conversion errors."""
    description = (
        f"`{report.target}`: `{report.source}` with its first convolution replaced by a fully trainable "
        "Gaussian-derivative layer (Penaud--Polge et al., ICIP 2022), the starting point of the paper's "
        "Table 2.\n\n" + report.card_section()
    )
    metrics = {"stem_kernel_rel_error": report.fit.kernel_error, "logit_rel_error": report.logit_error,
               "top1_agreement": report.top1_agreement}
    return export_hub_folder(model, tag, root, org=org, metrics=metrics, command=command, datasets=datasets,
                             license=license, description=description)
