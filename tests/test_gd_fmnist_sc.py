"""``gd_fmnist_sc``: the registered scale-channel model; its default tag ``fmnist_channels`` (trained with its channels)
and ``fmnist`` (the published single-scale ``gd_fmnist.fmnist_table1`` weights in steered channels).

References are built without the model's code path: the weights read from the shipped file with safetensors into a
plain ``gd_fmnist``, the channels made by ``gdzoo.steer`` on their own, the crops and the max written out by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import gdzoo
from gdzoo.models.gd_fmnist_sc import SHARED_WEIGHTS, ScaleChannelClassifier
from gdzoo.models.pretrained import default_org

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights" / "gd_fmnist.fmnist_table1" / "model.safetensors"
TRAINED = REPO / "weights" / "gd_fmnist_sc.fmnist_channels" / "model.safetensors"
ROOT2 = 2**0.5


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    """A plain gd_fmnist holding the shipped gd_fmnist.fmnist_table1 tensors, read straight from the file."""
    model = timm.create_model("gd_fmnist", pretrained=False)
    model.load_state_dict(load_file(WEIGHTS))
    return model.eval()


@pytest.fixture(scope="module")
def sc() -> ScaleChannelClassifier:
    return timm.create_model("gd_fmnist_sc.fmnist", pretrained=True).eval()


def _images(n: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, side, side, generator=torch.Generator().manual_seed(seed))


def test_pretrained_weights_are_the_published_single_scale_file(sc, reference) -> None:
    state = sc.state_dict()
    expected = load_file(WEIGHTS)
    assert sorted(state) == sorted(expected)  # exactly gd_fmnist's keys: the channels own no tensor
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    assert sc.scales == (1.0, ROOT2, 2.0) and sc.pool == "max" and sc.window == 28 and sc.below_one == "steer"
    assert sc.where == "logits" and sc.channel_dropout == 0.0
    assert sc.num_classes == 10 and sc.in_chans == 1
    assert sc.pretrained_cfg["architecture"] == "gd_fmnist_sc" and sc.pretrained_cfg["tag"] == "fmnist"
    # the base's repo: no copy of the file
    assert sc.pretrained_cfg["hf_hub_id"] == f"{default_org()}/gd_fmnist.fmnist_table1"
    assert SHARED_WEIGHTS == {"gd_fmnist_sc.fmnist": "gd_fmnist.fmnist_table1"}
    assert not (REPO / "weights" / "gd_fmnist_sc.fmnist").exists()


def test_scale_one_channel_is_the_plain_model(sc, reference) -> None:
    x = _images(4, 28)
    with torch.no_grad():
        channels = sc.channel_logits(x)
        expected = reference(x)
    assert channels.shape == (4, 3, 10)
    assert torch.equal(channels[:, 0], expected)


def test_pooling_is_the_max_over_independently_steered_models(sc, reference) -> None:
    """On a 72×72 canvas: channel s runs steer(gd_fmnist, s) on the centred crop of side 28·s (28, 40, 56)."""
    x = _images(3, 72, seed=1)
    crops = {1.0: slice(22, 50), ROOT2: slice(16, 56), 2.0: slice(8, 64)}  # 28·√2 = 39.6 → 40 (even, as 72)
    with torch.no_grad():
        outs = [(reference if s == 1.0 else gdzoo.steer(reference, scale=s))(x[..., c, c]) for s, c in crops.items()]
        got = sc(x)
    hand = torch.empty(3, 10)
    for n in range(3):
        for k in range(10):
            hand[n, k] = max(float(o[n, k]) for o in outs)
    torch.testing.assert_close(got, hand, rtol=1e-5, atol=1e-5)


def test_a_plain_28x28_image_is_seen_as_on_a_background_canvas(sc, reference) -> None:
    """Channels √2 and 2 see the image padded with the normalised black background to 40 and 56 pixels."""
    y = _images(2, 28, seed=2)
    black = (0.0 - 0.2860) / 0.3530
    assert sc.fill == pytest.approx(black)
    padded = {s: torch.nn.functional.pad(y, (p, p, p, p), value=black) for s, p in ((ROOT2, 6), (2.0, 14))}
    with torch.no_grad():
        outs = [reference(y), gdzoo.steer(reference, scale=ROOT2)(padded[ROOT2]),
                gdzoo.steer(reference, scale=2.0)(padded[2.0])]
        torch.testing.assert_close(sc(y), torch.maximum(torch.maximum(outs[0], outs[1]), outs[2]),
                                   rtol=1e-5, atol=1e-5)
        canvas = torch.full((2, 1, 72, 72), black)
        canvas[..., 22:50, 22:50] = y
        torch.testing.assert_close(sc(y), sc(canvas), rtol=1e-5, atol=1e-5)


def test_channel_arguments_and_head_override(reference) -> None:
    model = timm.create_model("gd_fmnist_sc.fmnist", pretrained=True, scales=(1.0, 2.0), pool="mean", window=0).eval()
    assert model.window is None and model.fill is None
    x = _images(2, 28, seed=3)
    with torch.no_grad():
        expected = (reference(x) + gdzoo.steer(reference, scale=2.0)(x)) / 2
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    headless = timm.create_model("gd_fmnist_sc.fmnist", pretrained=True, num_classes=42)
    assert headless.num_classes == 42 and headless(x).shape == (2, 42)
    assert torch.equal(headless.state_dict()["stem.conv.weight"], load_file(WEIGHTS)["stem.conv.weight"])
    with pytest.raises(ValueError, match="pool must be one of"):
        timm.create_model("gd_fmnist_sc", pool="median")
    with pytest.raises(ValueError, match="gd_fmnist_sc has no features_only model"):
        timm.create_model("gd_fmnist_sc", features_only=True)


def test_weights_file_overlay_goes_to_the_base(tmp_path, reference) -> None:
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in load_file(WEIGHTS).items()}
    state["head.fc.bias"] += 1.0
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    model = timm.create_model("gd_fmnist_sc.fmnist", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    assert torch.equal(model.state_dict()["head.fc.bias"], state["head.fc.bias"])


def test_listed_and_found_as_the_published_file() -> None:
    from gdzoo.models.pretrained import available_weights_file

    assert timm.list_pretrained("gd_fmnist_sc*") == ["gd_fmnist_sc.fmnist", "gd_fmnist_sc.fmnist_channels"]
    assert Path(available_weights_file("gd_fmnist_sc.fmnist")).resolve() == WEIGHTS.resolve()
    assert Path(available_weights_file("gd_fmnist_sc")).resolve() == TRAINED.resolve()


def test_loads_offline_with_an_empty_hub_cache(tmp_path) -> None:
    program = (
        "import json, timm, torch, gdzoo; from safetensors.torch import load_file\n"
        "m = timm.create_model('gd_fmnist_sc.fmnist', pretrained=True)\n"
        f"ref = load_file({str(WEIGHTS)!r})\n"
        "print(json.dumps(all(torch.equal(v, ref[k]) for k, v in m.state_dict().items())))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "GDZOO_CACHE": str(tmp_path / "gd"),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) is True
    assert not any((tmp_path / "hf").rglob("*.safetensors"))


# the sides of the channels' frames, 28·2^(k/4) for k = −4 … 4 rounded to the nearest even integer (28 is even)
FRAMES = (14, 16, 20, 24, 28, 34, 40, 48, 56)


def test_default_tag_is_trained_with_its_channels_and_pools_resized_frames() -> None:
    """The default weights: their own file; nine channels, each the plain gd_fmnist (holding that file's tensors) on
    its frame cropped or padded with the black background and resized to 28×28 by hand, pooled by logsumexp."""
    model = timm.create_model("gd_fmnist_sc", pretrained=True).eval()
    assert model.pretrained_cfg["tag"] == "fmnist_channels"
    assert Path(model.pretrained_cfg["file"]).resolve() == TRAINED.resolve()  # the file it read, as timm's models say
    expected = load_file(TRAINED)
    state = model.state_dict()
    assert sorted(state) == sorted(expected) and all(torch.equal(state[k], v) for k, v in expected.items())
    assert model.scales == pytest.approx([2 ** (k / 4) for k in range(-4, 5)])
    assert (model.pool, model.below_one, model.above_one, model.window) == ("logsumexp", "resize", "resize", 28)
    reference = timm.create_model("gd_fmnist", pretrained=False)
    reference.load_state_dict(expected)
    reference.eval()
    black = (0.0 - 0.2860) / 0.3530
    y = _images(2, 28, seed=4)
    inputs = []
    for side in FRAMES:
        if side <= 28:
            start = (28 - side) // 2
            frame = y[..., start:start + side, start:start + side]
        else:
            pad = (side - 28) // 2
            frame = torch.nn.functional.pad(y, (pad, pad, pad, pad), value=black)
        inputs.append(frame if side == 28 else torch.nn.functional.interpolate(
            frame, size=(28, 28), mode="bicubic", antialias=True, align_corners=False))
    with torch.no_grad():
        logits = torch.stack([reference(x) for x in inputs], dim=1)
        torch.testing.assert_close(model.channel_logits(y), logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(y), torch.logsumexp(logits, dim=1), rtol=1e-5, atol=1e-5)


def test_a_users_own_tag_gets_the_default_channels_unless_it_names_them(tmp_path) -> None:
    """A gd_fmnist_sc exported under another tag (gdzoo hub export) loads by hf-hub: its config.json model_args (timm
    records the arguments given) restore its channels; a cfg without them gets the default tag's."""
    from gdzoo.hub.export import export_hub_folder

    mine = timm.create_model("gd_fmnist_sc", scales=(1.0, 2.0), pool="max", above_one="resize").eval()
    folder = export_hub_folder(mine, "mine", tmp_path, org="me")
    config = json.loads((folder.path / "config.json").read_text())
    assert config["model_args"]["scales"] == [1.0, 2.0] and config["model_args"]["above_one"] == "resize"
    cfg = {**config["pretrained_cfg"], "file": str(folder.path / "model.safetensors")}  # what an hf-hub: load passes
    reloaded = timm.create_model("gd_fmnist_sc", pretrained=True, pretrained_cfg=cfg, **config["model_args"])
    assert (reloaded.scales, reloaded.pool, reloaded.above_one) == ((1.0, 2.0), "max", "resize")
    assert reloaded.pretrained_cfg["tag"] == "mine" and tuple(reloaded.pretrained_cfg["mean"]) == (0.286,)
    assert all(torch.equal(v, mine.state_dict()[k]) for k, v in reloaded.state_dict().items())
    default = timm.create_model("gd_fmnist_sc", pretrained=True, pretrained_cfg=cfg)
    assert default.scales == pytest.approx([2 ** (k / 4) for k in range(-4, 5)]) and default.pool == "logsumexp"
