"""torch.hub entry points for gdzoo: ``torch.hub.load('<owner>/gdzoo', 'gd_fmnist', pretrained=True)``.

One entry per timm model that gdzoo registers (generated from the registry, so the two cannot drift apart);
each builds that model with ``timm.create_model``, so keyword arguments are timm's: ``num_classes``,
``in_chans``, ``features_only``, ``norm``... ``pretrained=True`` resolves as ``timm.create_model`` does in
gdzoo: published weights from the ``weights/`` folder of this repository copy (sha256-checked, no network),
``gd_vgg16``/``gd_vgg16_bn`` from the Hub or derived from timm's ImageNet VGG16 on first use, anything else
from ``hf-hub:<org>/<model>.<tag>``. Helpers have underscore names so that ``torch.hub.list`` shows only the models.
"""

dependencies = ["torch", "timm", "huggingface_hub", "safetensors"]

import timm as _timm  # noqa: E402

import gdzoo as _gdzoo  # noqa: E402,F401  (registers the models with timm)
from gdzoo.models import list_gdzoo_models as _list_gdzoo_models  # noqa: E402


def _entry(name: str):
    """The torch.hub entry for timm model ``name``, documented by the model's own timm entry point."""

    def entry(pretrained: bool = False, **kwargs):
        return _timm.create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = _timm.models.model_entrypoint(name).__doc__
    return entry


globals().update({_name: _entry(_name) for _name in _list_gdzoo_models()})
