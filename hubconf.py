"""torch.hub entry points for gdzoo: ``torch.hub.load('<owner>/gdzoo', 'gd_fmnist', pretrained=True)``.

Every entry builds the timm model of the same name (gdzoo registers them on import), so keyword
arguments are timm's: ``num_classes``, ``in_chans``, ``features_only``, ``norm``... ``pretrained=True``
resolves as ``timm.create_model`` does in gdzoo: published weights from the ``weights/`` folder of this
repository copy (sha256-checked, no network), ``gd_vgg16``/``gd_vgg16_bn`` from the Hub or derived from
timm's ImageNet VGG16 on first use, anything else from ``hf-hub:<org>/<model>.<tag>``.
Helpers are imported under underscore names so that ``torch.hub.list`` shows only the models.
"""

dependencies = ["torch", "timm", "huggingface_hub", "safetensors"]

import timm as _timm  # noqa: E402

import gdzoo as _gdzoo  # noqa: E402,F401  (registers the models with timm)


def _create(name: str, pretrained: bool, **kwargs):
    return _timm.create_model(name, pretrained=pretrained, **kwargs)


def gd_fmnist(pretrained: bool = False, **kwargs):
    """Fashion-MNIST net, "Ours" (paper Table 1): four 7×7 GD layers (order 3), GAP, linear."""
    return _create("gd_fmnist", pretrained, **kwargs)


def gd_fmnist_few(pretrained: bool = False, **kwargs):
    """Fashion-MNIST net, "Ours-few": ``gd_fmnist`` with half the bases per layer."""
    return _create("gd_fmnist_few", pretrained, **kwargs)


def gd_fmnist_sep(pretrained: bool = False, **kwargs):
    """Fashion-MNIST net, "Ours-separated": ``gd_fmnist`` with separated combinations (eq. 4)."""
    return _create("gd_fmnist_sep", pretrained, **kwargs)


def ff_fmnist(pretrained: bool = False, **kwargs):
    """Fashion-MNIST net, free-form baseline: the same network with 3×3 ``nn.Conv2d``."""
    return _create("ff_fmnist", pretrained, **kwargs)


def rfnn_fmnist(pretrained: bool = False, **kwargs):
    """Fashion-MNIST net, RFNN baseline: one fixed isotropic GD basis per layer, only ω trains."""
    return _create("rfnn_fmnist", pretrained, **kwargs)


def dau_fmnist(pretrained: bool = False, **kwargs):
    """Fashion-MNIST net, DAU-ConvNet baseline: 7×7 filters of 10 displaced Gaussian units, σ learned per unit."""
    return _create("dau_fmnist", pretrained, **kwargs)


def gd_vgg16(pretrained: bool = False, **kwargs):
    """timm's VGG16 with a Gaussian-derivative first layer (paper Table 2)."""
    return _create("gd_vgg16", pretrained, **kwargs)


def gd_vgg16_bn(pretrained: bool = False, **kwargs):
    """timm's VGG16-BN with a Gaussian-derivative first layer."""
    return _create("gd_vgg16_bn", pretrained, **kwargs)


def gd_unet(pretrained: bool = False, **kwargs):
    """Gaussian U-net (paper Table 3): every 5×5 convolution a GD layer; logits (N, classes, H, W)."""
    return _create("gd_unet", pretrained, **kwargs)


def gd_unet_k7b2(pretrained: bool = False, **kwargs):
    """Gaussian U-net with 7×7 GD layers and one basis per 2 outputs (27.6 % of ``unet5``'s parameters)."""
    return _create("gd_unet_k7b2", pretrained, **kwargs)


def unet5(pretrained: bool = False, **kwargs):
    """Classical U-net with free-form 5×5 filters, same topology as ``gd_unet``."""
    return _create("unet5", pretrained, **kwargs)


def gd_convnext_atto(pretrained: bool = False, **kwargs):
    """timm's ConvNeXt-atto with 7×7 Gaussian-derivative depthwise convolutions (``groups=C``), order 3."""
    return _create("gd_convnext_atto", pretrained, **kwargs)


def gd_convnext_atto_k31(pretrained: bool = False, **kwargs):
    """``gd_convnext_atto`` with 31×31 GD depthwise kernels and the same parameter count."""
    return _create("gd_convnext_atto_k31", pretrained, **kwargs)
