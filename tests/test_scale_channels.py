"""ScaleChannels: each channel against an independently steered model (gdzoo.steer), pooling against torch's reductions,
gradients against the chain rule through independently steered copies, refusals, scale-channel dropout, state dicts."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from gdzoo import GDConv2d, ScaleChannels, steer

SCALES = (0.7, 1.0, 1.5, 2.0)
REDUCE = {"max": lambda t: t.amax(1), "mean": lambda t: t.mean(1), "logsumexp": lambda t: torch.logsumexp(t, 1)}


class TinyNet(nn.Module):
    """Two GD layers, norms, ReLU, a 2×2 max-pool, a 1×1 conv, global average pooling, a linear head (timm's API)."""

    def __init__(self, separated: bool = False, norm: str = "batchnorm") -> None:
        super().__init__()
        make_norm = (lambda c: nn.BatchNorm2d(c)) if norm == "batchnorm" else (lambda c: nn.Identity())
        self.body = nn.Sequential(
            GDConv2d(1, 4, 5, num_bases=2, order=2, separated=separated), make_norm(4), nn.ReLU(), nn.MaxPool2d(2),
            GDConv2d(4, 6, 5, num_bases=3, order=3, separated=separated, bias=False), make_norm(6), nn.ReLU(),
            nn.Conv2d(6, 6, 1),
        )
        self.fc = nn.Linear(6, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(-2, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def tiny(separated: bool = False, norm: str = "batchnorm", seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet(separated, norm).double()
    with torch.no_grad():  # non-trivial norm state, so sharing it across channels is tested too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, GDConv2d) and m.bias is not None:
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def independent(model: nn.Module, x: torch.Tensor, scales=SCALES, features: bool = False) -> torch.Tensor:
    """``(N, C, ...)``: ``steer(model, s)`` run on its own for every scale."""
    outs = []
    for s in scales:
        copy = steer(model, scale=s)
        outs.append(copy.forward_features(x) if features else copy(x))
    return torch.stack(outs, dim=1)


@pytest.fixture(autouse=True)
def _one_thread(single_thread: None) -> None:
    return None


@pytest.mark.parametrize("separated", [False, True])
def test_each_channel_equals_the_independently_steered_model(separated: bool) -> None:
    model = tiny(separated)
    x = torch.randn(2, 1, 20, 20, dtype=torch.float64)
    channels = ScaleChannels(model, scales=SCALES).eval()
    with torch.no_grad():
        torch.testing.assert_close(channels.channel_logits(x), independent(model, x), rtol=1e-9, atol=1e-10)
        with torch.no_grad():  # the channels read the base tensors at forward time: an update is seen at once
            model.body[0].sigma_raw.add_(0.3)
            model.body[4].mu_raw.mul_(-1.5)
        torch.testing.assert_close(channels.channel_logits(x), independent(model, x), rtol=1e-9, atol=1e-10)


def test_channels_of_the_published_architecture_equal_steer() -> None:
    model = timm.create_model("gd_fmnist").eval()
    x = torch.randn(1, 1, 40, 40)
    channels = ScaleChannels(model, scales=(0.75, 1.0, 2.0)).eval()
    with torch.no_grad():
        torch.testing.assert_close(channels.channel_logits(x), independent(model, x, (0.75, 1.0, 2.0)),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pool", ["max", "mean", "logsumexp"])
def test_pooling_equals_torch_reductions_of_the_independent_outputs(pool: str) -> None:
    model = tiny()
    x = torch.randn(3, 1, 18, 18, dtype=torch.float64)
    with torch.no_grad():
        got = ScaleChannels(model, scales=SCALES, pool=pool).eval()(x)
        torch.testing.assert_close(got, REDUCE[pool](independent(model, x)), rtol=1e-9, atol=1e-10)
        features = ScaleChannels(model, scales=SCALES, pool=pool, where="features").eval()(x)
        expected = model.forward_head(REDUCE[pool](independent(model, x, features=True)))
        torch.testing.assert_close(features, expected, rtol=1e-9, atol=1e-10)


def test_window_runs_each_channel_on_its_rescaled_training_frame() -> None:
    model = tiny()
    x = torch.randn(2, 1, 40, 40, dtype=torch.float64)
    scales = (0.7, 1.0, 1.5, 2.0, 3.0)
    # window 16: 11.2 → 12, 16, 24, 32 (the nearest even sizes: 40 is even), 48 → the whole 40×40 input
    crops = [x[..., 14:26, 14:26], x[..., 12:28, 12:28], x[..., 8:32, 8:32], x[..., 4:36, 4:36], x]
    channels = ScaleChannels(model, scales=scales, window=16).eval()
    with torch.no_grad():
        expected = torch.stack([steer(model, scale=s)(c) for s, c in zip(scales, crops)], dim=1)
        torch.testing.assert_close(channels.channel_logits(x), expected, rtol=1e-9, atol=1e-10)
    odd = torch.randn(1, 1, 41, 41, dtype=torch.float64)
    with torch.no_grad():  # 41 is odd: 16·1.0 → 17 (the nearest odd size), centred at 20
        got = ScaleChannels(model, scales=(1.0,), window=16).eval()(odd)
        torch.testing.assert_close(got, model(odd[..., 12:29, 12:29]))


def test_fill_pads_a_small_input_to_each_channel_frame() -> None:
    """window 16, fill -2 on a 16×16 input: channel 1.5 sees it padded by 4 (24), 2 by 8 (32); 0.7 is cropped (12)."""
    model = tiny()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    scales = (0.7, 1.0, 1.5, 2.0)
    inputs = [x[..., 2:14, 2:14], x, F.pad(x, (4, 4, 4, 4), value=-2.0), F.pad(x, (8, 8, 8, 8), value=-2.0)]
    channels = ScaleChannels(model, scales=scales, window=16, fill=-2.0).eval()
    with torch.no_grad():
        expected = torch.stack([steer(model, scale=s)(c) for s, c in zip(scales, inputs)], dim=1)
        torch.testing.assert_close(channels.channel_logits(x), expected, rtol=1e-9, atol=1e-10)
        canvas = torch.full((2, 1, 40, 40), -2.0, dtype=torch.float64)
        canvas[..., 12:28, 12:28] = x  # the same image on a canvas of background: the same channels
        torch.testing.assert_close(channels.channel_logits(canvas), expected, rtol=1e-9, atol=1e-10)


def _bicubic(crop: torch.Tensor, size: int) -> torch.Tensor:
    """``crop`` resized to ``size × size`` as a resized channel does it (bicubic, antialiased)."""
    return F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


@pytest.mark.parametrize("window", [None, 16])
def test_below_one_resize_runs_the_plain_model_on_the_enlarged_input(window: int | None) -> None:
    model = tiny()
    x = torch.randn(2, 1, 40, 40, dtype=torch.float64)
    channels = ScaleChannels(model, scales=(0.5, 0.7, 1.0, 2.0), window=window, below_one="resize").eval()
    enlarged = _bicubic
    if window is None:  # the whole input enlarged by 1/s: 80 and round(57.1) = 57 pixels
        inputs = [enlarged(x, 80), enlarged(x, 57), x, x]
    else:  # the crop of side ≈ 16·s (8, 12: even as 40) enlarged to 16×16; then 16 and 32 as before
        inputs = [enlarged(x[..., 16:24, 16:24], 16), enlarged(x[..., 14:26, 14:26], 16), x[..., 12:28, 12:28],
                  x[..., 4:36, 4:36]]
    with torch.no_grad():
        outs = [model(inputs[0]), model(inputs[1]), model(inputs[2]), steer(model, scale=2.0)(inputs[3])]
        expected = torch.stack(outs, dim=1)
        torch.testing.assert_close(channels.channel_logits(x), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("window", [None, 16])
def test_above_one_resize_runs_the_plain_model_on_the_shrunk_input(window: int | None) -> None:
    model = tiny()
    x = torch.randn(2, 1, 40, 40, dtype=torch.float64)
    channels = ScaleChannels(model, scales=(0.7, 1.0, 1.5, 2.0), window=window, above_one="resize").eval()
    shrunk = _bicubic
    if window is None:  # the whole input shrunk by 1/s: round(26.7) = 27 and 20 pixels
        inputs = [x, x, shrunk(x, 27), shrunk(x, 20)]
    else:  # the crop of side ≈ 16·s (24, 32: even as 40) shrunk to 16×16; 0.7 steered on its crop of side 12
        inputs = [x[..., 14:26, 14:26], x[..., 12:28, 12:28], shrunk(x[..., 8:32, 8:32], 16),
                  shrunk(x[..., 4:36, 4:36], 16)]
    with torch.no_grad():
        outs = [steer(model, scale=0.7)(inputs[0]), model(inputs[1]), model(inputs[2]), model(inputs[3])]
        expected = torch.stack(outs, dim=1)
        torch.testing.assert_close(channels.channel_logits(x), expected, rtol=1e-9, atol=1e-10)


def test_above_one_resize_with_fill_shrinks_the_image_on_background() -> None:
    """A 16×16 image at channel 2 with window 16: padded with the fill to 32×32, then shrunk to 16×16."""
    model = tiny()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    channels = ScaleChannels(model, scales=(2.0,), window=16, fill=-1.5, above_one="resize").eval()
    canvas = torch.full((2, 1, 32, 32), -1.5, dtype=torch.float64)
    canvas[..., 8:24, 8:24] = x
    expected = model(_bicubic(canvas, 16))
    with torch.no_grad():
        torch.testing.assert_close(channels(x), expected, rtol=1e-9, atol=1e-10)


def _map_back(base: nn.Module, copy: nn.Module, scale: float) -> dict[str, torch.Tensor]:
    """Chain rule by hand: the gradient w.r.t. ``base``'s tensors of a loss whose gradient w.r.t. the tensors of
    ``copy = steer(base, scale)`` is in ``copy``'s ``.grad`` (σ_raw' = softplus⁻¹(s·softplus(σ_raw)), μ' = sμ,
    θ' = θ, w'_n = s^{p+q} w_n; everything else is shared as is)."""
    copied = dict(copy.named_parameters())
    grads = {}
    for name, param in base.named_parameters():
        g = copied[name].grad
        layer_name, _, leaf = name.rpartition(".")
        layer = base.get_submodule(layer_name)
        if isinstance(layer, GDConv2d) and leaf == "sigma_raw":
            g = g * scale * torch.sigmoid(param) / torch.sigmoid(copied[name])
        elif isinstance(layer, GDConv2d) and leaf == "mu_raw":
            g = g * scale
        elif isinstance(layer, GDConv2d) and leaf in ("weight", "weight_out"):
            gain = torch.tensor([scale ** (p + q) for p, q in layer.orders], dtype=g.dtype)
            g = g * gain
        grads[name] = g
    return grads


@pytest.mark.parametrize(("pool", "separated", "where"), [("max", False, "logits"), ("mean", True, "logits"),
                                                           ("logsumexp", False, "logits"), ("max", True, "features")])
def test_gradients_are_the_sum_over_independently_steered_copies(pool: str, separated: bool, where: str) -> None:
    model = tiny(separated, norm="none")
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    target = torch.tensor([0, 2])
    channels = ScaleChannels(model, scales=SCALES, pool=pool, where=where)
    F.cross_entropy(channels(x), target).backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}

    copies = [steer(model, scale=s) for s in SCALES]
    for c in copies:
        c.zero_grad()
    if where == "features":
        pooled = REDUCE[pool](torch.stack([c.forward_features(x) for c in copies], 1))
        logits = copies[0].forward_head(pooled)  # the head is not steered: any copy's is the base's
    else:
        logits = REDUCE[pool](torch.stack([c(x) for c in copies], 1))
    F.cross_entropy(logits, target).backward()
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for scale, copy in zip(SCALES, copies):
        for name, g in _map_back(model, copy, scale).items():
            if where == "features" and name.startswith("fc.") and copy is not copies[0]:
                continue  # only the first copy's head ran
            expected[name] += g
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-7, atol=1e-10, msg=name)
    assert all(got[name].abs().sum() > 0 for name in got if "sigma_raw" in name or "mu_raw" in name)


def test_non_steerable_models_are_refused_naming_the_layer() -> None:
    with pytest.raises(ValueError, match=r"stem\.conv: free-form Conv2d"):
        ScaleChannels(timm.create_model("ff_fmnist"))
    with pytest.raises(ValueError, match=r"stem\.conv: DAUConv2d"):
        ScaleChannels(timm.create_model("dau_fmnist"))
    strided = nn.Sequential(nn.Identity(), GDConv2d(1, 2, 5, stride=2, padding=2))
    with pytest.raises(ValueError, match=r"1: stride \(2, 2\)"):
        ScaleChannels(strided)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pool": "median"}, r"pool must be one of \('max', 'mean', 'logsumexp'\), got 'median'"),
    ({"where": "input"}, r"where must be one of \('logits', 'features'\), got 'input'"),
    ({"scales": (1.0, 0.0)}, r"every scale must be a finite number > 0, got 0.0"),
    ({"scales": (1.0, 1.0)}, r"scales must not repeat"),
    ({"scales": 2.0}, r"scales must be a non-empty sequence"),
    ({"channel_dropout": 1.0}, r"channel_dropout must be a probability in \[0, 1\), got 1.0"),
    ({"window": 0}, r"window must be None or a positive int \(the training images' side\), got 0"),
    ({"window": 28, "where": "features"}, r"window needs where='logits'"),
    ({"fill": 0.0}, r"fill must be None or a finite number, and needs window; got fill=0.0, window=None"),
    ({"window": 16, "fill": float("nan")}, r"fill must be None or a finite number"),
    ({"below_one": "blur"}, r"below_one must be one of \('steer', 'resize'\), got 'blur'"),
    ({"below_one": "resize", "where": "features"}, r"below_one='resize' needs where='logits'"),
    ({"above_one": "grow"}, r"above_one must be one of \('steer', 'resize'\), got 'grow'"),
    ({"above_one": "resize", "where": "features"}, r"above_one='resize' needs where='logits'"),
])
def test_bad_arguments_name_the_value_and_what_is_allowed(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScaleChannels(tiny(), **kwargs)


def test_features_pooling_needs_timm_feature_api() -> None:
    with pytest.raises(ValueError, match="forward_features and forward_head"):
        ScaleChannels(nn.Sequential(GDConv2d(1, 2, 5)), scales=(1.0, 2.0), where="features")


def test_scale_channel_dropout_keeps_at_least_one_channel_and_is_off_in_eval() -> None:
    model = tiny(norm="none")
    channels = ScaleChannels(model, scales=SCALES, channel_dropout=0.9).train()
    torch.manual_seed(0)
    counts = [len(channels.active_channels()) for _ in range(300)]
    assert min(counts) >= 1 and max(counts) < len(SCALES)
    assert counts.count(1) > 200  # P(one kept) = P(exactly one survives) + P(none survives) ≈ 0.29 + 0.66
    channels.eval()
    assert all(channels.active_channels() == list(range(len(SCALES))) for _ in range(20))

    channels = ScaleChannels(model, scales=SCALES, pool="mean", channel_dropout=0.5).train()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    for seed in range(5):  # the forward pools exactly the channels of its draw
        torch.manual_seed(seed)
        kept = channels.active_channels()
        torch.manual_seed(seed)
        got = channels(x)
        expected = independent(model, x, [SCALES[i] for i in kept]).mean(1)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


def test_state_dict_has_the_base_model_keys_and_loads_both_ways() -> None:
    model = tiny()
    channels = ScaleChannels(model, scales=(1.0, 2.0))
    state = channels.state_dict()
    assert list(state) == list(model.state_dict())
    fresh = tiny(seed=1)
    fresh.load_state_dict(state)
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
        other = ScaleChannels(tiny(seed=2), scales=(1.0, 2.0)).eval()
        other.load_state_dict(model.state_dict())
        torch.testing.assert_close(other(x), channels.eval()(x))
    nested = nn.Sequential(channels)
    assert list(nested.state_dict()) == [f"0.{k}" for k in model.state_dict()]
    nested_other = nn.Sequential(ScaleChannels(tiny(seed=3), scales=(1.0, 2.0)))
    nested_other.load_state_dict(nested.state_dict())
    torch.testing.assert_close(nested_other[0].model.fc.weight, model.fc.weight)


def test_parameters_are_the_base_models_and_train_mode_reaches_every_channel() -> None:
    model = tiny()
    channels = ScaleChannels(model, scales=SCALES)
    assert [id(p) for p in channels.parameters()] == [id(p) for p in model.parameters()]
    channels.train()
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    before = model.body[1].num_batches_tracked.item()
    channels(x)  # batch statistics in every channel; running statistics updated once per channel
    assert model.body[1].num_batches_tracked.item() == before + len(SCALES)
    assert channels._shells and all(shell.training for _, shell in channels._shells.values())
    channels.eval()
    with torch.no_grad():
        torch.testing.assert_close(channels.channel_logits(x), independent(model, x), rtol=1e-9, atol=1e-10)



def test_channels_follow_a_new_head() -> None:
    model = tiny()
    channels = ScaleChannels(model, scales=(1.0, 2.0)).eval()
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert channels(x).shape == (1, 3)
        model.fc = nn.Linear(6, 5).double()  # the structural copies are rebuilt: their tensors' shapes changed
        torch.testing.assert_close(channels.channel_logits(x), independent(model, x, (1.0, 2.0)), rtol=1e-9, atol=1e-10)


def test_a_reparameterized_model_runs_resized_channels_and_names_what_needs_steering() -> None:
    """After timm's reparameterize_model (what gdzoo export does), resized channels and scale 1 still run, on the plain
    convolutions; a steered channel is refused with its scale and the layers named."""
    from timm.utils.model import reparameterize_model

    from gdzoo.layers.steer import steering_problems

    model = tiny()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    resized = ScaleChannels(model, scales=(0.5, 1.0, 2.0), window=8, below_one="resize", above_one="resize").eval()
    steered = ScaleChannels(model, scales=(1.0, 2.0), window=8).eval()
    with torch.no_grad():
        before = resized(x)
        resized, steered = reparameterize_model(resized), reparameterize_model(steered)  # copies, as export makes
        assert "body.0" in steering_problems(resized.model) and "body.0" in steering_problems(steered.model)
        torch.testing.assert_close(resized(x), before, rtol=1e-7, atol=1e-9)
        with pytest.raises(ValueError, match=r"channel \(scale 2, angle 0\) needs steering.*body\.0: reparameterized"):
            steered(x)
