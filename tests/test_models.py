"""timm conformance of gdzoo's models, after timm's own ``tests/test_models.py``, plus model-specific checks.

Classification models (``gd_fmnist*``, ``ff_fmnist``, ``rfnn_fmnist``, ``gd_vgg16*``) go through timm's
checks: forward, backward with ``num_classes=42``, default cfg / classifier / pooling, ``features_only``,
``forward_intermediates``, TorchScript (or a documented skip), FX. Inputs are kept small (Fashion-MNIST
at 28×28, VGG at 64×64) so the whole file runs in well under two minutes on two CPU cores. The U-nets
get a segmentation version of the same checks (odd sizes, per-pixel logits, encoder features).
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn as nn
from timm.data import resolve_model_data_config
from timm.layers import create_feature_extractor, get_graph_node_names
from timm.models import group_parameters

import gdzoo  # noqa: F401  (registers the models)
from gdzoo import GDConv2d
from gdzoo.layers import DAUConv2d
from gdzoo.models import FixedNorm2d, gd_cfg, list_gdzoo_models
from gdzoo.models._cfg import PAPER_IDS, PAPER_NAME
from gdzoo.models.pretrained import PUBLISHED_WEIGHTS, default_org, hub_repo_id

SEG_MODELS = ["gd_unet", "unet5", "gd_unet_k7b2"]
FMNIST_MODELS = ["dau_fmnist", "ff_fmnist", "gd_fmnist", "gd_fmnist_few", "gd_fmnist_sep", "rfnn_fmnist"]
VGG_MODELS = ["gd_vgg16", "gd_vgg16_bn"]
CONVNEXT_MODELS = ["gd_convnext_atto", "gd_convnext_atto_k31"]
# gd_convnext_atto_k31 is gd_convnext_atto's class with 31×31 kernels (slow on CPU at these test sizes): the
# conformance checks run on gd_convnext_atto, the k31 specifics in tests/test_gd_convnext.py.
# gd_fmnist_sc is gd_fmnist in ScaleChannels (steered copies run by functional_call): forward and backward are checked
# here; timm's feature API (features_only, forward_features, forward_intermediates, feature_info) is its base model's
# and FX cannot trace the channels, so the rest of its checks are in tests/test_gd_fmnist_sc.py.
SC_MODELS = ["gd_fmnist_sc"]
CLS_MODELS = [m for m in list_gdzoo_models() if m not in SEG_MODELS + SC_MODELS and m != "gd_convnext_atto_k31"]
MAX_SIZE = 64  # spatial cap for test inputs (VGG's 224 → 64)

TORCHSCRIPT_SKIP = (
    "GDConv2d (and DAUConv2d, built the same way) is not TorchScript-compilable: it keeps a Python-side kernel cache "
    "keyed on parameter values, a dataclass ConvSpec and property-based geometry (TorchScript is also deprecated in "
    "torch 2.x); GD models are checked with torch.jit.trace and FX instead"
)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _input_size(model: nn.Module) -> tuple[int, int, int]:
    """The model's default input size, spatially capped at ``MAX_SIZE``, with the model's channels."""
    _, h, w = model.pretrained_cfg["input_size"]
    return (model.in_chans, min(h, MAX_SIZE), min(w, MAX_SIZE))


def _has_gd(model: nn.Module) -> bool:
    return any(isinstance(m, (GDConv2d, DAUConv2d)) for m in model.modules())


def _param_count(model: nn.Module, trainable: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def test_registered_models() -> None:
    """Every model family of the issue is registered with timm, from gdzoo modules named gd_*.py."""
    assert sorted(list_gdzoo_models()) == sorted(FMNIST_MODELS + VGG_MODELS + SEG_MODELS + CONVNEXT_MODELS + SC_MODELS)
    assert set(timm.list_models("gd_*")) >= {"gd_fmnist", "gd_fmnist_few", "gd_fmnist_sep", "gd_vgg16", "gd_unet"}
    for name in list_gdzoo_models():
        module = timm.models.model_entrypoint(name).__module__
        assert module.rsplit(".", 1)[-1].startswith("gd_"), module
    assert {t.split(".")[0] for t in timm.list_models("gd_fmnist*", include_tags=True)} >= {"gd_fmnist"}
    assert "gd_fmnist.fmnist" in timm.list_models("gd_fmnist*", include_tags=True)


def test_build_on_meta_device() -> None:
    """Every model builds on the meta device (parameter counts without allocating weights)."""
    for name in list_gdzoo_models():
        with torch.device("meta"):
            model = timm.create_model(name)
        assert all(p.is_meta for p in model.parameters())


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*model.named_parameters(), *model.named_buffers()]


@pytest.mark.parametrize("model_name", list_gdzoo_models())
def test_device_kwarg(model_name: str) -> None:
    """timm's ``device=`` factory kwarg: every parameter and buffer is created there."""
    model = timm.create_model(model_name, device="meta")
    wrong = [n for n, t in _tensors(model) if not t.is_meta]
    assert not wrong, f"not on the meta device: {wrong}"


SMALL_MODELS = FMNIST_MODELS + SEG_MODELS


@pytest.mark.parametrize("model_name", list_gdzoo_models())
def test_dtype_kwarg(model_name: str) -> None:
    """timm's ``dtype=`` factory kwarg: every floating parameter/buffer is bf16; small models run a bf16 forward."""
    model = timm.create_model(model_name, dtype=torch.bfloat16).eval()
    wrong = [(n, t.dtype) for n, t in _tensors(model) if t.is_floating_point() and t.dtype != torch.bfloat16]
    assert not wrong, f"not bfloat16: {wrong}"
    if model_name not in SMALL_MODELS:
        return
    x = torch.randn(2, *_input_size(model))
    with torch.no_grad():
        out = model(x.bfloat16())
        ref = timm.create_model(model_name).eval()
        ref.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        expected = ref(x.bfloat16().float())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert float((out.float() - expected).norm() / expected.norm()) < 0.05  # bf16 rounding only


# ---------------------------------------------------------------------------------------------
# timm's conformance checks, classification models
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", CLS_MODELS + SC_MODELS)
def test_model_forward(model_name: str) -> None:
    """A single eval forward pass gives (B, num_classes) finite logits."""
    model = timm.create_model(model_name).eval()
    x = torch.randn(2, *_input_size(model))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, model.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("model_name", CLS_MODELS + SC_MODELS)
def test_model_backward(model_name: str) -> None:
    """Backward with num_classes=42 reaches every trainable parameter and no frozen one."""
    model = timm.create_model(model_name, num_classes=42).train()
    x = torch.randn(2, *_input_size(model))
    out = model(x)
    out.mean().backward()
    assert out.shape == (2, 42)
    assert torch.isfinite(out).all()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"no gradient for {name}"
        else:
            assert p.grad is None, f"frozen {name} got a gradient"
    num_grad = sum(p.grad.numel() for p in model.parameters() if p.grad is not None)
    assert num_grad == _param_count(model)


@pytest.mark.parametrize("model_name", CLS_MODELS)
def test_model_default_cfgs(model_name: str) -> None:
    """Pretrained cfg is complete; first_conv/classifier are real modules; pooling and reset_classifier shapes."""
    model = timm.create_model(model_name).eval()
    cfg = model.pretrained_cfg
    for key in ("input_size", "mean", "std", "num_classes", "first_conv", "classifier", "license", "pool_size"):
        assert cfg.get(key) is not None, key
    assert cfg["paper_name"] == PAPER_NAME and cfg["paper_ids"] == PAPER_IDS
    assert_hub_id(cfg, model_name)
    assert cfg["hf_hub_filename"] == "model.safetensors"
    in_chans = cfg["input_size"][0]
    assert model.in_chans == in_chans and len(cfg["mean"]) == in_chans and len(cfg["std"]) == in_chans
    assert cfg["num_classes"] == model.num_classes
    if cfg.get("label_names") is not None:
        assert len(cfg["label_names"]) == cfg["num_classes"]

    state_dict = model.state_dict()
    first = model.get_submodule(cfg["first_conv"])
    assert isinstance(first, (nn.Conv2d, GDConv2d, DAUConv2d)) and first.in_channels == in_chans
    assert any(k.startswith(cfg["first_conv"] + ".weight") for k in state_dict)
    classifier = model.get_submodule(cfg["classifier"])
    assert classifier is model.get_classifier()
    assert cfg["classifier"] + ".weight" in state_dict
    assert classifier.out_features == model.num_classes

    data_cfg = resolve_model_data_config(model)
    assert data_cfg["input_size"] == cfg["input_size"]
    assert tuple(data_cfg["mean"]) == tuple(cfg["mean"]) and tuple(data_cfg["std"]) == tuple(cfg["std"])
    assert data_cfg["crop_pct"] == cfg["crop_pct"] and data_cfg["interpolation"] == cfg["interpolation"]

    size = _input_size(model)
    x = torch.randn(1, *size)
    reduction = model.feature_info[-1]["reduction"]
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, model.num_features, size[1] // reduction, size[2] // reduction)
        if size == tuple(cfg["input_size"]):
            assert tuple(feats.shape[-2:]) == tuple(cfg["pool_size"])
        assert model.forward_head(feats, pre_logits=True).shape == (1, model.head_hidden_size)
        assert torch.allclose(model.forward_head(feats), model(x), atol=1e-5)

        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), nn.Identity)
        assert model.num_classes == 0
        assert model(x).shape == (1, model.head_hidden_size)

        model.reset_classifier(0, "")  # no pooling, no classifier: spatial output
        assert model(x).ndim == 4

        model.reset_classifier(7, "avg")
        assert model(x).shape == (1, 7) and model.get_classifier().out_features == 7


@pytest.mark.parametrize("model_name", CLS_MODELS)
def test_model_forward_features(model_name: str) -> None:
    """features_only=True: feature_info channels and reductions match the actual outputs."""
    model = timm.create_model(model_name, features_only=True).eval()
    channels = model.feature_info.channels()
    reductions = model.feature_info.reduction()
    assert len(channels) >= 4
    size = _input_size(model)
    with torch.no_grad():
        outs = model(torch.randn(2, *size))
    assert len(outs) == len(channels)
    for out, c, r in zip(outs, channels, reductions):
        assert out.shape == (2, c, size[1] // r, size[2] // r)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("model_name", FMNIST_MODELS + ["gd_vgg16_bn"])
def test_model_features_out_indices(model_name: str) -> None:
    """features_only with a subset of out_indices returns just those levels."""
    model = timm.create_model(model_name, features_only=True, out_indices=(1, 2)).eval()
    full = timm.create_model(model_name, features_only=True)
    size = _input_size(model)
    with torch.no_grad():
        outs = model(torch.randn(1, *size))
    assert [o.shape[1] for o in outs] == model.feature_info.channels() == full.feature_info.channels()[1:3]


@pytest.mark.parametrize("model_name", CLS_MODELS)
def test_model_forward_intermediates(model_name: str) -> None:
    """forward_intermediates: final output equals forward_features, intermediates match feature_info."""
    model = timm.create_model(model_name).eval()
    size = _input_size(model)
    x = torch.randn(1, *size)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x), atol=1e-5)
        only = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert len(intermediates) == len(model.feature_info)
    for out, info in zip(intermediates, model.feature_info):
        r = info["reduction"]
        assert out.shape == (1, info["num_chs"], size[1] // r, size[2] // r)
    assert [o.shape for o in only] == [o.shape for o in intermediates[-2:]]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("model_name", CLS_MODELS)
def test_model_forward_torchscript(model_name: str) -> None:
    """TorchScript for free-form models; GD models are traced instead (see TORCHSCRIPT_SKIP)."""
    with timm.set_scriptable(True):
        model = timm.create_model(model_name).eval()
    if _has_gd(model):
        pytest.skip(TORCHSCRIPT_SKIP)
    scripted = torch.jit.script(model)
    x = torch.randn(2, *_input_size(model))
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit.trace")
@pytest.mark.parametrize("model_name", [m for m in FMNIST_MODELS if m != "ff_fmnist"])
def test_model_forward_jit_trace(model_name: str) -> None:
    """GD models export through torch.jit.trace (the TorchScript route that works for them).

    Traced with gradients on: under ``no_grad`` GDConv2d serves kernels from its cache, which a trace
    records as constants (fine for inference export, but the trace checker's re-trace then differs).
    """
    model = timm.create_model(model_name).eval()
    x = torch.randn(2, *_input_size(model))
    traced = torch.jit.trace(model, x)
    x2 = torch.randn(3, *_input_size(model))
    with torch.no_grad():
        assert torch.allclose(traced(x2), model(x2), atol=1e-5)


@pytest.mark.parametrize("model_name", CLS_MODELS)
def test_model_forward_fx(model_name: str) -> None:
    """torch.fx via timm's helpers (GDConv2d is a registered leaf): eval and train graphs match the model."""
    model = timm.create_model(model_name).eval()
    train_nodes, eval_nodes = get_graph_node_names(model)
    fx_model = create_feature_extractor(model, {eval_nodes[-1]: "out"})
    x = torch.randn(2, *_input_size(model))
    with torch.no_grad():
        assert torch.allclose(fx_model(x)["out"], model(x), atol=1e-5)
    if model_name in VGG_MODELS:
        return  # one VGG backward (test_model_backward) is enough
    fx_model.train()
    out = fx_model(x)["out"]
    out.mean().backward()
    assert all(p.grad is not None for p in fx_model.parameters() if p.requires_grad)


@pytest.mark.parametrize("model_name", FMNIST_MODELS)
def test_model_features_wrappers(model_name: str) -> None:
    """timm's list (default), getter (forward_intermediates) and FX feature wrappers agree exactly."""
    torch.manual_seed(0)
    default = timm.create_model(model_name, features_only=True).eval()
    assert "stem.norm.bias" in default.state_dict()  # list wrapper keeps the classifier's names
    outs = []
    for feature_cls in ("getter", "fx"):
        torch.manual_seed(0)
        outs.append(timm.create_model(model_name, features_only=True, feature_cls=feature_cls).eval())
    x = torch.randn(1, *_input_size(default))
    with torch.no_grad():
        ref = default(x)
        for wrapper in outs:
            assert wrapper.feature_info.channels() == default.feature_info.channels()
            for a, b in zip(wrapper(x), ref):
                assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("model_name", FMNIST_MODELS + VGG_MODELS)
def test_group_matcher_and_checkpointing(model_name: str) -> None:
    """group_matcher covers every parameter; grad checkpointing gives the same gradients (where supported)."""
    model = timm.create_model(model_name).train()
    groups = group_parameters(model, model.group_matcher())
    assert sum(len(v) for v in groups.values()) == len(list(model.named_parameters()))
    if model_name in VGG_MODELS:  # timm's VGG: no gradient checkpointing (asserts on enable)
        model.set_grad_checkpointing(False)
        with pytest.raises(AssertionError):
            model.set_grad_checkpointing(True)
        return
    model = model.eval()  # BatchNorm variants must not update statistics between the two passes
    x = torch.randn(2, *_input_size(model), requires_grad=True)
    model(x).sum().backward()
    ref = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for g, p in zip(ref, [p for p in model.parameters() if p.requires_grad]):
        assert torch.allclose(g, p.grad, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST family specifics
# ---------------------------------------------------------------------------------------------
FMNIST_PARAMS = {  # trainable parameters, default widths (16, 32, 32, 64), norm='fixed'
    "gd_fmnist": 40_394,
    "gd_fmnist_few": 38_594,
    "gd_fmnist_sep": 23_834,
    "ff_fmnist": 33_194,
    "rfnn_fmnist": 36_794,
    "dau_fmnist": 144_794,
}


@pytest.mark.parametrize("model_name", FMNIST_MODELS)
def test_fmnist_param_counts(model_name: str) -> None:
    """Trainable parameter counts match docs/models.md (regenerate both together)."""
    model = timm.create_model(model_name)
    print(f"{model_name}: {_param_count(model):,} trainable / {_param_count(model, False):,} total")
    assert _param_count(model) == FMNIST_PARAMS[model_name]


def test_fmnist_variants_architecture() -> None:
    """Same topology everywhere; 'few' halves the bases; 'sep' keeps Ours' bases with ~a third fewer params."""
    ours, few, sep = (timm.create_model(n) for n in ("gd_fmnist", "gd_fmnist_few", "gd_fmnist_sep"))
    gd = lambda m: [c for c in m.modules() if isinstance(c, GDConv2d)]  # noqa: E731
    for a, b, c in zip(gd(ours), gd(few), gd(sep)):
        assert a.kernel_size == (7, 7) and a.order == 3 and a.num_kernels == 10
        assert b.num_bases * 2 == a.num_bases and c.num_bases == a.num_bases
        assert c.separated and not a.separated and not b.separated
    assert 0.5 < _param_count(sep) / _param_count(ours) < 0.7
    ff = timm.create_model("ff_fmnist")
    assert [m.kernel_size for m in ff.modules() if isinstance(m, nn.Conv2d)] == [(3, 3)] * 4
    assert [info["reduction"] for info in ours.feature_info] == [1, 2, 4, 4]


def test_rfnn_trainable() -> None:
    """RFNN: fixed isotropic unshifted unrotated bases (σ 1.5 then 1.0); only ω, β and the classifier train."""
    model = timm.create_model("rfnn_fmnist")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    allowed = ("stem.conv.weight", "stem.norm.bias", "head.fc.weight", "head.fc.bias")
    assert all(n in allowed or n.endswith((".conv.weight", ".norm.bias")) for n in trainable), trainable
    layers = [m for m in model.modules() if isinstance(m, GDConv2d)]
    assert len(layers) == 4
    for i, layer in enumerate(layers):
        assert layer.num_bases == 1 and not layer.separated
        assert not any(p.requires_grad for p in (layer.sigma_raw, layer.mu_raw, layer.theta_raw))
        assert torch.allclose(layer.sigma, torch.full_like(layer.sigma, 1.5 if i == 0 else 1.0), atol=1e-5)
        assert torch.count_nonzero(layer.mu) == 0 and torch.count_nonzero(layer.theta) == 0
    geometry = [layer.basis().clone() for layer in layers]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(4, 1, 28, 28)).logsumexp(1).mean().backward()
    opt.step()
    assert all(torch.equal(g, layer.basis()) for g, layer in zip(geometry, layers))


def test_fmnist_fixed_norm_is_frozen_batchnorm() -> None:
    """norm='fixed' equals BatchNorm2d with γ=1, running mean 0 / var 1 (ε=0) in eval, only β trained."""
    model = timm.create_model("gd_fmnist")
    norms = [m for m in model.modules() if isinstance(m, FixedNorm2d)]
    assert len(norms) == 4 and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    norm = norms[1]
    with torch.no_grad():
        norm.bias.normal_()
    bn = nn.BatchNorm2d(norm.num_features, eps=0.0).eval()
    with torch.no_grad():
        bn.bias.copy_(norm.bias)
    x = torch.randn(2, norm.num_features, 5, 5)
    assert torch.allclose(norm(x), bn(x), atol=1e-6)
    assert [n for n, _ in norm.named_parameters()] == ["bias"]

    bn_model = timm.create_model("gd_fmnist", norm="batchnorm")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn_model.modules()) == 4
    assert _param_count(bn_model) == FMNIST_PARAMS["gd_fmnist"] + sum(info["num_chs"] for info in model.feature_info)


@pytest.mark.parametrize("model_name", ["gd_fmnist", "gd_fmnist_sep", "ff_fmnist"])
def test_fmnist_overrides(model_name: str) -> None:
    """in_chans=3 and num_classes overrides reach the stem and the classifier."""
    model = timm.create_model(model_name, in_chans=3, num_classes=5).eval()
    assert model.in_chans == 3 and model.stem.conv.in_channels == 3
    with torch.no_grad():
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 5)
        assert model(torch.randn(1, 3, 33, 47)).shape == (1, 5)  # any size: global pooling


def test_fmnist_labels_and_data_config() -> None:
    """The Fashion-MNIST cfg: 1×28×28, dataset mean/std, its ten class names."""
    cfg = timm.create_model("gd_fmnist").pretrained_cfg
    assert cfg["input_size"] == (1, 28, 28)
    assert cfg["mean"] == (0.2860,) and cfg["std"] == (0.3530,)
    assert cfg["label_names"][0] == "T-shirt/top" and cfg["label_names"][-1] == "Ankle boot"
    assert cfg["tag"] == "fmnist" and cfg["first_conv"] == "stem.conv"


# ---------------------------------------------------------------------------------------------
# Pretrained plumbing
# ---------------------------------------------------------------------------------------------
def assert_hub_id(cfg: dict, model_name: str) -> None:
    """Published and derived tags point at '<org>/<model>.<tag>'; the others carry no hf_hub_id (nothing to list)."""
    from gdzoo.models.gd_vgg import DERIVED_FROM

    name = f"{model_name}.{cfg['tag']}"
    if name in PUBLISHED_WEIGHTS or name in DERIVED_FROM:
        assert cfg["hf_hub_id"] == f"{default_org()}/{name}"
    else:
        assert "hf_hub_id" not in cfg


def test_gd_cfg_org_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub repo ids are '<org>/<model>.<tag>' with org from $GDZOO_HF_ORG (default 'gdzoo')."""
    monkeypatch.delenv("GDZOO_HF_ORG", raising=False)
    assert hub_repo_id("gd_fmnist", "fmnist") == "gdzoo/gd_fmnist.fmnist"
    monkeypatch.setenv("GDZOO_HF_ORG", "someone")
    assert hub_repo_id("unet5", "monuseg") == "someone/unet5.monuseg"
    with pytest.raises(ValueError):
        gd_cfg("gd_fmnist")


@pytest.mark.parametrize("model_name", ["gd_fmnist", "gd_fmnist_sep"])
def test_pretrained_in_chans_adaptation(model_name: str, tmp_path) -> None:
    """pretrained=True from a 1-channel checkpoint into in_chans=3: GD stem weights repeated and rescaled."""
    from safetensors.torch import save_file

    source = timm.create_model(model_name)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = timm.create_model(model_name, pretrained=True, in_chans=3, pretrained_cfg_overlay=dict(file=str(path)))
    separated = model_name == "gd_fmnist_sep"
    key, dim = ("stem.conv.weight_in", 2) if separated else ("stem.conv.weight", 1)
    w_src, w = source.state_dict()[key], model.state_dict()[key]
    assert w.shape[dim] == 3
    for i in range(3):
        assert torch.allclose(w.select(dim, i), w_src.select(dim, 0) / 3)
    deeper = "stages.2.conv.weight_out" if separated else "stages.2.conv.weight"
    assert torch.equal(model.state_dict()[deeper], source.state_dict()[deeper])


# ---------------------------------------------------------------------------------------------
# VGG specifics
# ---------------------------------------------------------------------------------------------
def test_gd_vgg16_is_timm_vgg() -> None:
    """gd_vgg16 is timm's VGG16 with features.0 a 3×3 GDConv2d 3→64; every other parameter is timm's."""
    model = timm.create_model("gd_vgg16")
    ref = timm.create_model("vgg16")
    assert isinstance(model, timm.models.vgg.VGG)
    first = model.features[0]
    assert isinstance(first, GDConv2d) and (first.in_channels, first.out_channels) == (3, 64)
    assert first.kernel_size == (3, 3) and first.padding == (1, 1)
    shapes = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("features.0.")}
    ref_shapes = {k: v.shape for k, v in ref.state_dict().items() if not k.startswith("features.0.")}
    assert shapes == ref_shapes
    assert model.pretrained_cfg["first_conv"] == "features.0" and model.pretrained_cfg["tag"] == "tv_in1k"
    # an ImageNet vgg16 checkpoint loads into everything but the GD stem
    ref_sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("features.0.")}
    missing, unexpected = model.load_state_dict(ref_sd, strict=False)
    assert not unexpected and all(k.startswith("features.0.") for k in missing)


# ---------------------------------------------------------------------------------------------
# Segmentation models
# ---------------------------------------------------------------------------------------------
UNET_PARAMS = {"unet5": 97_034, "gd_unet": 25_178, "gd_unet_k7b2": 26_738}  # paper Table 3: 97,202 and 25,298
# (model, kernel size, GD outputs per basis; None: nn.Conv2d)
UNET_CONVS = {"gd_unet": (5, 4), "unet5": (5, None), "gd_unet_k7b2": (7, 2)}


def test_unet_variant_is_gd_unet_with_its_arguments() -> None:
    """gd_unet_k7b2 is gd_unet(kernel_size=7, filters_per_basis=2): same keys and shapes,
    27.6 % of unet5's parameters."""
    variant = timm.create_model("gd_unet_k7b2").state_dict()
    spelled = timm.create_model("gd_unet", kernel_size=7, filters_per_basis=2).state_dict()
    assert {k: v.shape for k, v in variant.items()} == {k: v.shape for k, v in spelled.items()}
    assert UNET_PARAMS["gd_unet_k7b2"] / UNET_PARAMS["unet5"] <= 0.30


@pytest.mark.parametrize("model_name", ["gd_unet", "unet5"])
def test_unet_param_counts(model_name: str) -> None:
    """Trainable parameters close to the paper's Table 3 (within 1 %)."""
    model = timm.create_model(model_name)
    count = _param_count(model)
    paper = {"unet5": 97_202, "gd_unet": 25_298}[model_name]
    print(f"{model_name}: {count:,} trainable parameters (paper: {paper:,})")
    assert count == UNET_PARAMS[model_name]
    assert abs(count - paper) / paper < 0.01


@pytest.mark.parametrize("size", [(37, 45), (1, 1), (16, 24), (64, 64)])
@pytest.mark.parametrize("model_name", SEG_MODELS)
def test_unet_forward_any_size(model_name: str, size: tuple[int, int]) -> None:
    """Logits (N, num_classes, H, W) for any H, W (internal pad to a multiple of 8, crop back)."""
    model = timm.create_model(model_name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, model.num_classes, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("model_name", SEG_MODELS)
def test_unet_backward(model_name: str) -> None:
    """Backward with num_classes=3 at an odd size reaches every parameter."""
    model = timm.create_model(model_name, num_classes=3).train()
    out = model(torch.randn(2, 3, 29, 35))
    assert out.shape == (2, 3, 29, 35)
    out.mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"


@pytest.mark.parametrize("model_name", SEG_MODELS)
def test_unet_default_cfg_and_head(model_name: str) -> None:
    """cfg names real modules; forward = forward_head ∘ forward_features; reset_classifier(0) gives features."""
    model = timm.create_model(model_name).eval()
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 128, 128) and cfg["tag"] == "monuseg" and cfg["num_classes"] == 2
    assert cfg["tag"] == "monuseg" and cfg["hf_hub_filename"] == "model.safetensors"
    assert_hub_id(cfg, model_name)
    assert len(cfg["mean"]) == len(cfg["std"]) == 3
    first = model.get_submodule(cfg["first_conv"])
    assert isinstance(first, (nn.Conv2d, GDConv2d)) and first.in_channels == 3
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    assert resolve_model_data_config(model)["input_size"] == (3, 128, 128)
    x = torch.randn(1, 3, 21, 30)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, model.num_features, 21, 30)
        assert torch.allclose(model.forward_head(feats), model(x), atol=1e-5)
        assert torch.equal(model.forward_head(feats, pre_logits=True), feats)
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features, 21, 30)
        model.reset_classifier(4)
        assert model(x).shape == (1, 4, 21, 30)


@pytest.mark.parametrize("model_name", SEG_MODELS)
def test_unet_convs(model_name: str) -> None:
    """gd_unet: every spatial conv is a 5×5 GDConv2d (order 2, 4 outputs per basis); gd_unet_k7b2: 7×7, 2 per basis;
    unet5: 5×5 nn.Conv2d; all with a 1×1 output."""
    model = timm.create_model(model_name)
    spatial = [m for m in model.modules() if isinstance(m, (nn.Conv2d, GDConv2d)) and m is not model.head]
    size, per_basis = UNET_CONVS[model_name]
    assert len(spatial) == 14 and all(m.kernel_size == (size, size) for m in spatial)
    assert _param_count(model) == UNET_PARAMS[model_name]
    if per_basis is not None:
        assert all(isinstance(m, GDConv2d) and m.order == 2 and m.out_channels
                   // m.num_bases == per_basis for m in spatial)
    else:
        assert all(type(m) is nn.Conv2d for m in spatial)
    assert model.head.kernel_size == (1, 1)


@pytest.mark.parametrize("model_name", SEG_MODELS)
def test_unet_features_only(model_name: str) -> None:
    """features_only=True: encoder levels with feature_info channels/reductions, cropped to ceil(H / r)."""
    model = timm.create_model(model_name, features_only=True).eval()
    assert model.feature_info.channels() == [8, 16, 16, 24]
    assert model.feature_info.reduction() == [1, 2, 4, 8]
    h, w = 37, 30
    with torch.no_grad():
        outs = model(torch.randn(2, 3, h, w))
    for out, c, r in zip(outs, model.feature_info.channels(), model.feature_info.reduction()):
        assert out.shape == (2, c, math.ceil(h / r), math.ceil(w / r))
    assert not hasattr(model.model, "decoder") or len(model.model.decoder) == 0  # decoder pruned
    sub = timm.create_model(model_name, features_only=True, out_indices=(1, 2)).eval()
    with torch.no_grad():
        assert [o.shape[1] for o in sub(torch.randn(1, 3, 32, 32))] == [16, 16]


def _padded_encoder_maps(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Reference: the encoder levels run on x zero-padded (bottom/right) to a multiple of 8,
    each cropped to ceil(H / r)."""
    h, w = x.shape[-2:]
    y = torch.nn.functional.pad(x, (0, -w % 8, 0, -h % 8))
    maps = []
    for i, level in enumerate(model.encoder):
        y = level(y)
        maps.append(y[..., : math.ceil(h / 2**i), : math.ceil(w / 2**i)])
    return maps


@pytest.mark.parametrize("model_name", SEG_MODELS)
def test_unet_forward_intermediates_final_feeds_the_head(model_name: str) -> None:
    """timm's contract: ``forward_head(forward_intermediates(x)[0]) == forward(x)``;
    intermediates are the cropped levels."""
    model = timm.create_model(model_name).eval()
    x = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        assert final.shape == (2, model.num_features, 37, 45)
        torch.testing.assert_close(model.forward_head(final), model(x), rtol=1e-5, atol=1e-5)
        for got, ref in zip(intermediates, _padded_encoder_maps(model, x), strict=True):
            torch.testing.assert_close(got, ref, rtol=0, atol=0)
        only = model.forward_intermediates(x, indices=[1, 2], stop_early=True, intermediates_only=True)
    assert [o.shape[-2:] for o in only] == [(19, 23), (10, 12)]


@pytest.mark.parametrize("model_name", SEG_MODELS)
def test_unet_feature_paths_agree_on_odd_sizes(model_name: str) -> None:
    """features_only: 'getter' (forward_intermediates) and 'fx' (graph taps) give the same cropped maps."""
    wrappers = []
    for feature_cls in ("getter", "fx"):
        torch.manual_seed(0)
        wrappers.append(timm.create_model(model_name, features_only=True, feature_cls=feature_cls).eval())
    torch.manual_seed(0)
    reference = timm.create_model(model_name).eval()
    x = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        expected = _padded_encoder_maps(reference, x)
        for wrapper in wrappers:
            outs = wrapper(x)
            assert [tuple(o.shape[-2:]) for o in outs] == [(37, 45), (19, 23), (10, 12), (5, 6)]
            for got, ref in zip(outs, expected, strict=True):
                torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("model_name", SEG_MODELS)
def test_unet_overrides_and_checkpointing(model_name: str) -> None:
    """in_chans=1 works; gradient checkpointing reproduces the gradients."""
    model = timm.create_model(model_name, in_chans=1, num_classes=1).eval()
    x = torch.randn(1, 1, 19, 13)
    model(x).sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    assert model(x).shape == (1, 1, 19, 13)
    model(x).sum().backward()
    assert all(torch.allclose(g, p.grad, atol=1e-5) for g, p in zip(ref, model.parameters()))
    groups = group_parameters(model, model.group_matcher())
    assert sum(len(v) for v in groups.values()) == len(list(model.named_parameters()))


@pytest.mark.parametrize("model_name", SEG_MODELS)
def test_unet_fx(model_name: str) -> None:
    """Both U-nets trace with FX (pad/crop are registered leaf functions, GDConv2d a leaf module)."""
    model = timm.create_model(model_name).eval()
    x = torch.randn(1, 3, 27, 20)
    _, eval_nodes = get_graph_node_names(model)
    fx_model = create_feature_extractor(model, {eval_nodes[-1]: "out"})
    with torch.no_grad():
        assert torch.allclose(fx_model(x)["out"], model(x), atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("model_name", SEG_MODELS)
def test_unet_torchscript(model_name: str) -> None:
    """unet5 scripts; gd_unet is skipped (see TORCHSCRIPT_SKIP)."""
    model = timm.create_model(model_name).eval()
    if _has_gd(model):
        pytest.skip(TORCHSCRIPT_SKIP)
    x = torch.randn(1, 3, 27, 20)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)
