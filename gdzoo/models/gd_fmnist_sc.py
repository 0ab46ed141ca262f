"""``gd_fmnist_sc``: ``gd_fmnist`` in scale channels (:class:`~gdzoo.layers.ScaleChannels`), issue #36.

The channels are steered copies of one ``gd_fmnist`` that share all its parameters, so the model's weights
*are* ``gd_fmnist``'s (``state_dict()`` has exactly its keys) and ``gd_fmnist_sc.fmnist`` loads the published
single-scale ``gd_fmnist.fmnist`` file itself: no second copy ships (:data:`SHARED_WEIGHTS`).

Channel configuration: ScaleChannels' defaults, scales ``(1, √2, 2)`` and ``pool='max'`` over the logits, with
``window=28`` (each channel sees its training frame rescaled, so a larger centred canvas works) and ``fill`` the
black background in normalised units (a channel whose frame is larger than the input sees the input padded with
background, so a plain 28×28 image is seen exactly as on a canvas). Not chosen on the test table: the published
``gd_fmnist.fmnist`` was trained on all 60000 training images, so no held-out data exists to choose on
(docs/scale.md). Every argument of :class:`~gdzoo.layers.ScaleChannels` can be overridden:
``timm.create_model('gd_fmnist_sc', scales=(2**-0.5, 1, 2**0.5, 2), below_one='resize')``; ``window=0`` turns the
window (and the fill) off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn as nn
from timm.models import generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models._pretrained import PretrainedCfg

from ..layers import ScaleChannels
from .gd_fmnist import FMNIST_MEAN, FMNIST_STD, _fmnist_cfg, gd_fmnist
from .weights_source import hub_repo_id, model_and_tag

__all__ = ["SC_FILL", "SC_POOL", "SC_SCALES", "SC_WINDOW", "SHARED_WEIGHTS", "ScaleChannelClassifier"]

SC_SCALES = (1.0, 2**0.5, 2.0)
SC_POOL = "max"
SC_WINDOW = 28  # gd_fmnist's training images are 28×28
SC_FILL = -FMNIST_MEAN[0] / FMNIST_STD[0]  # Fashion-MNIST's black background after normalisation

# '<model>.<tag>' whose weights are another published tag's file, loaded into the base model unchanged.
SHARED_WEIGHTS = {"gd_fmnist_sc.fmnist": "gd_fmnist.fmnist"}


class ScaleChannelClassifier(ScaleChannels):
    """:class:`~gdzoo.layers.ScaleChannels` with the attributes timm code reads from a classifier.

    ``num_classes``, ``in_chans``, ``get_classifier`` and ``reset_classifier`` are the base model's (the channels
    follow a new head); ``pretrained_cfg`` is set by the entry point.
    """

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def in_chans(self) -> int:
        return self.model.in_chans

    def get_classifier(self) -> nn.Module:
        return self.model.get_classifier()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.model.reset_classifier(num_classes, global_pool)


default_cfgs = generate_default_cfgs({
    # The weights are gd_fmnist.fmnist's: same Hub repo, same shipped file.
    "gd_fmnist_sc.fmnist": _fmnist_cfg("gd_fmnist_sc", hf_hub_id=hub_repo_id("gd_fmnist", "fmnist")),
})


def _tag(pretrained_cfg: str | dict | PretrainedCfg | None) -> str | None:
    """The tag of the pretrained cfg timm passes to an entry point (a tag, a cfg, its dict, or None)."""
    if pretrained_cfg is None or isinstance(pretrained_cfg, str):
        return pretrained_cfg
    return pretrained_cfg.tag if isinstance(pretrained_cfg, PretrainedCfg) else pretrained_cfg.get("tag")


@register_model
def gd_fmnist_sc(
    pretrained: bool = False,
    scales: Sequence[float] = SC_SCALES,
    pool: str = SC_POOL,
    where: str = "logits",
    channel_dropout: float = 0.0,
    window: int = SC_WINDOW,
    below_one: str = "steer",
    fill: float = SC_FILL,
    above_one: str = "steer",
    **kwargs: Any,
) -> ScaleChannelClassifier:
    """``gd_fmnist`` in scale channels (1, √2, 2), max over logits; pretrained: the published ``gd_fmnist.fmnist``.

    ``window=0``: no window (every channel on the whole input, unpadded); ``timm.create_model`` drops arguments
    given as None, so 0 stands for ScaleChannels' ``window=None``.
    """
    if kwargs.get("features_only"):
        raise ValueError("gd_fmnist_sc has no features_only model (each channel has its own feature maps): use "
                         "timm.create_model('gd_fmnist', features_only=True), or ScaleChannels(where='features')")
    tag = _tag(kwargs.pop("pretrained_cfg", None))
    overlay = kwargs.pop("pretrained_cfg_overlay", None)
    cfg = resolve_pretrained_cfg("gd_fmnist_sc", pretrained_cfg=tag, pretrained_cfg_overlay=overlay).to_dict()
    base_tag = model_and_tag(SHARED_WEIGHTS[f"gd_fmnist_sc.{cfg['tag']}"])[1]
    base = gd_fmnist(pretrained=pretrained, pretrained_cfg=base_tag, pretrained_cfg_overlay=overlay, **kwargs)
    model = ScaleChannelClassifier(base, scales=scales, pool=pool, where=where, channel_dropout=channel_dropout,
                                   window=window or None, below_one=below_one, fill=fill if window else None,
                                   above_one=above_one)
    model.pretrained_cfg = model.default_cfg = cfg
    return model
