"""The one place where gdzoo's pretrained cfgs (timm ``PretrainedCfg`` dicts) are built."""

from __future__ import annotations

from typing import Any

from .weights_files import WEIGHTS_FILE
from .weights_source import PUBLISHED_WEIGHTS, hub_repo_id, model_and_tag

__all__ = ["PAPER_IDS", "PAPER_NAME", "gd_cfg"]

PAPER_NAME = "Fully Trainable Gaussian Derivative Convolutional Layer"
PAPER_IDS = "doi:10.1109/ICIP46576.2022.9897734"


def gd_cfg(model_tag: str, derived: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Pretrained cfg for ``'<model>.<tag>'``: weights in ``WEIGHTS_FILE`` of the Hub repo ``<org>/<model>.<tag>``.

    Only published tags (``PUBLISHED_WEIGHTS``, one per shipped ``weights/<model>.<tag>/`` folder) and
    tags whose weights are ``derived`` on first use get an ``hf_hub_id``, so ``timm.list_pretrained()``
    lists exactly the weights that can be had; the others are architectures-only until their weights land.
    ``<org>`` is ``$GDZOO_HF_ORG`` (default ``gdzoo``), read when the cfg is built (at ``import gdzoo``). Where a
    load takes the file from (shipped copy, derived, Hub) is decided by :mod:`.weights_source`.

    ``kwargs`` (input_size, mean, std, num_classes, first_conv, classifier, ...) override the generic
    defaults below; every model family passes its own data and head fields.

    Example:
        >>> cfg = gd_cfg('gd_fmnist.fmnist', input_size=(1, 28, 28))
        >>> cfg['input_size'], cfg['hf_hub_filename'] == WEIGHTS_FILE
        ((1, 28, 28), True)
    """
    model, tag = model_and_tag(model_tag)
    published = {"hf_hub_id": hub_repo_id(model, tag)} if derived or model_tag in PUBLISHED_WEIGHTS else {}
    return {
        "url": "",
        **published,
        "hf_hub_filename": WEIGHTS_FILE,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "first_conv": "stem.conv",
        "classifier": "head.fc",
        "license": "apache-2.0",
        "paper_name": PAPER_NAME,
        "paper_ids": PAPER_IDS,
        "origin_url": "https://github.com/Penaud-Polge/Fully-Trainable-Gaussian-Derivative-Layer",
        **kwargs,
    }
