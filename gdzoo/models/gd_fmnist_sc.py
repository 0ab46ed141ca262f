"""``gd_fmnist_sc``: ``gd_fmnist`` in scale channels (:class:`~gdzoo.layers.ScaleChannels`), issue #36.

The channels share all the parameters of one ``gd_fmnist``, so the model's weights *are* ``gd_fmnist``'s
(``state_dict()`` has exactly its keys). Two published tags, each with its own channel configuration
(:data:`SC_CHANNELS`; every :class:`~gdzoo.layers.ScaleChannels` argument can still be overridden):

* ``gd_fmnist_sc.fmnist_channels`` (the default): trained *with* its channels on 28×28 images (scale 1 only):
  nine channels a quarter octave apart from 1/2 to 2, each the plain model on its training frame rescaled to
  28×28 (``below_one``/``above_one='resize'``), pooled as chosen on held-out validation images (docs/scale.md).
* ``gd_fmnist_sc.fmnist``: the published single-scale ``gd_fmnist.fmnist_table1`` file itself (Table 1's run, no
  second copy ships: :data:`SHARED_WEIGHTS`) in steered channels (1, √2, 2), max over the logits; never trained
  with them. It names that fixed tag, not the default ``gd_fmnist.fmnist`` (replaced when a better run lands), so
  the numbers docs/scale.md gives for it stay its own.

Both use ``window=28`` (each channel sees its training frame rescaled, so a larger centred canvas works) and
``fill``, the black background in normalised units (a channel whose frame is larger than the input sees the
input padded with background, so a plain 28×28 image is seen exactly as on a canvas). ``window=0`` turns the
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

__all__ = ["QUARTER_OCTAVES", "SC_CHANNELS", "SC_FILL", "SC_POOL", "SC_SCALES", "SC_WINDOW", "SHARED_WEIGHTS",
           "ScaleChannelClassifier"]

SC_SCALES = (1.0, 2**0.5, 2.0)
SC_POOL = "max"
QUARTER_OCTAVES = tuple(2 ** (k / 4) for k in range(-4, 5))  # 1/2 … 2, as the rescaled test sets
SC_WINDOW = 28  # gd_fmnist's training images are 28×28
SC_FILL = -FMNIST_MEAN[0] / FMNIST_STD[0]  # Fashion-MNIST's black background after normalisation

# '<model>.<tag>' whose weights are another published tag's file, loaded into the base model unchanged.
SHARED_WEIGHTS = {"gd_fmnist_sc.fmnist": "gd_fmnist.fmnist_table1"}
# tag -> the ScaleChannels configuration its weights were made for (the defaults of the entry point for that tag)
SC_CHANNELS: dict[str, dict[str, Any]] = {
    "fmnist_channels": dict(scales=QUARTER_OCTAVES, pool="logsumexp", below_one="resize", above_one="resize"),
    "fmnist": dict(scales=SC_SCALES, pool=SC_POOL, below_one="steer", above_one="steer"),
}


class ScaleChannelClassifier(ScaleChannels):
    """:class:`~gdzoo.layers.ScaleChannels` with the attributes timm code reads from a classifier.

    ``num_classes``, ``in_chans``, ``num_features``, ``get_classifier`` and ``reset_classifier`` are the base
    model's (the channels follow a new head); ``pretrained_cfg`` is set by the entry point.
    """

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def in_chans(self) -> int:
        return self.model.in_chans

    @property
    def num_features(self) -> int:
        return self.model.num_features

    def get_classifier(self) -> nn.Module:
        return self.model.get_classifier()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.model.reset_classifier(num_classes, global_pool)


default_cfgs = generate_default_cfgs({
    "gd_fmnist_sc.fmnist_channels": _fmnist_cfg("gd_fmnist_sc", "fmnist_channels"),
    # The weights are SHARED_WEIGHTS' tag's: same Hub repo, same shipped file.
    "gd_fmnist_sc.fmnist": _fmnist_cfg("gd_fmnist_sc",
                                       hf_hub_id=hub_repo_id(*model_and_tag(SHARED_WEIGHTS["gd_fmnist_sc.fmnist"]))),
})


def _tag(pretrained_cfg: str | dict | PretrainedCfg | None) -> str | None:
    """The tag of the pretrained cfg timm passes to an entry point (a tag, a cfg, its dict, or None)."""
    if pretrained_cfg is None or isinstance(pretrained_cfg, str):
        return pretrained_cfg
    return pretrained_cfg.tag if isinstance(pretrained_cfg, PretrainedCfg) else pretrained_cfg.get("tag")


@register_model
def gd_fmnist_sc(
    pretrained: bool = False,
    scales: Sequence[float] | None = None,
    pool: str | None = None,
    where: str = "logits",
    channel_dropout: float = 0.0,
    window: int = SC_WINDOW,
    below_one: str | None = None,
    fill: float = SC_FILL,
    above_one: str | None = None,
    **kwargs: Any,
) -> ScaleChannelClassifier:
    """``gd_fmnist`` in scale channels; ``scales``, ``pool``, ``below_one`` and ``above_one`` default to the
    configuration of the tag's weights (:data:`SC_CHANNELS`).

    ``window=0``: no window (every channel on the whole input, unpadded); ``timm.create_model`` drops arguments
    given as None, so 0 stands for ScaleChannels' ``window=None``.
    """
    if kwargs.get("features_only"):
        raise ValueError("gd_fmnist_sc has no features_only model (each channel has its own feature maps): use "
                         "timm.create_model('gd_fmnist', features_only=True), or ScaleChannels(where='features')")
    given = kwargs.pop("pretrained_cfg", None)
    overlay = kwargs.pop("pretrained_cfg_overlay", None)
    # a registered tag is looked up; a whole cfg (timm's hf-hub: loads pass config.json's) is taken as it is
    registered = given is None or isinstance(given, str) or _tag(given) in default_cfgs["gd_fmnist_sc"].tags
    cfg = resolve_pretrained_cfg("gd_fmnist_sc", pretrained_cfg=_tag(given) if registered else given,
                                 pretrained_cfg_overlay=overlay).to_dict()
    shared = SHARED_WEIGHTS.get(f"gd_fmnist_sc.{cfg['tag']}")
    # a shared tag loads the other tag's file; an own tag's cfg names its own Hub repo and shipped file
    base_cfg = model_and_tag(shared)[1] if shared else cfg
    base = gd_fmnist(pretrained=pretrained, pretrained_cfg=base_cfg, pretrained_cfg_overlay=overlay, **kwargs)
    channels = SC_CHANNELS.get(cfg["tag"], SC_CHANNELS["fmnist_channels"])  # another tag (a user's): the default's
    model = ScaleChannelClassifier(
        base, scales=channels["scales"] if scales is None else scales, pool=pool or channels["pool"], where=where,
        channel_dropout=channel_dropout, window=window or None, below_one=below_one or channels["below_one"],
        fill=fill if window else None, above_one=above_one or channels["above_one"])
    if "file" in base.pretrained_cfg:  # the file the weights were read from (gdzoo's resolver sets it on the base)
        cfg = {**cfg, "file": base.pretrained_cfg["file"]}
    model.pretrained_cfg = model.default_cfg = cfg
    return model
