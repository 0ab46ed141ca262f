"""benchmarks/scale_generalisation.py: its pooled scores are ScaleChannels' outputs, its scale sets are channels it
computed, and the training stage trains the base model's parameters and resumes."""

from __future__ import annotations

import sys
from argparse import Namespace

import pytest
import timm
import torch

from _paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from gdzoo import ScaleChannels

import scale_generalisation as sg


def test_every_scale_set_is_made_of_computed_channels() -> None:
    for subset in sg.SCALE_SETS.values():
        assert all(sg.PROTOCOL_SCALES[sg.channel_index(s)] == pytest.approx(s) for s in subset)


def test_parse_scales_reads_numbers_and_powers() -> None:
    assert sg.parse_scales("1, 2^0.5,2") == pytest.approx((1.0, 2**0.5, 2.0))
    with pytest.raises(SystemExit, match="'sqrt2' is not a number"):
        sg.parse_scales("1,sqrt2")


def test_pooled_predictions_from_stored_channels_equal_the_modules(single_thread: None) -> None:
    """Scoring a subset of the 9 channels' logits is what ScaleChannels(scales=subset, pool) predicts."""
    model = timm.create_model("gd_fmnist").eval()
    x = torch.randn(3, 1, 72, 72)
    subset = sg.SCALE_SETS["{1/√2, 1, √2, 2}"]
    with torch.no_grad():
        logits = ScaleChannels(model, scales=sg.PROTOCOL_SCALES, window=sg.FRAME).eval().channel_logits(x)
        idx = [sg.channel_index(s) for s in subset]
        for pool in ("max", "mean", "logsumexp"):
            got = sg.pooled_prediction(logits[:, idx], pool)
            expected = ScaleChannels(model, scales=subset, pool=pool, window=sg.FRAME).eval()(x).argmax(1)
            assert torch.equal(got, expected), pool


def test_maxprob_is_the_class_of_the_most_confident_channel() -> None:
    logits = torch.tensor([[[0.0, 3.0, 0.0], [5.0, 0.0, 4.9]], [[0.0, 0.0, 9.0], [1.0, 0.0, 0.0]]])
    # sample 0: channel 0 gives class 1 p≈0.91, channel 1 class 0 p≈0.52 → class 1; sample 1: channel 0 → class 2
    assert sg.pooled_prediction(logits, "maxprob").tolist() == [1, 2]


def _train_args(**changes) -> Namespace:
    args = dict(name="t", init="scratch", train_scales="1,2", train_angles="", pool="max", channel_dropout=0.5,
                epochs=1, steps=0, checkpoint_every=50, batch_size=32, lr=1e-3, seed=0, max_steps=0, train_subset=64,
                below_one="steer", above_one="steer")
    return Namespace(**{**args, **changes})


def test_train_stage_trains_the_base_model_and_resumes(tmp_path, monkeypatch, capsys, single_thread: None) -> None:
    from safetensors.torch import load_file

    monkeypatch.setattr(sg, "RUNS", tmp_path)
    args = _train_args()
    weights = sg.run_train(args)
    state = load_file(weights)
    torch.manual_seed(args.seed)
    initial = timm.create_model("gd_fmnist").state_dict()
    assert state.keys() == initial.keys()  # the plain model's keys: loads into gd_fmnist
    assert not torch.equal(state["stem.conv.sigma_raw"], initial["stem.conv.sigma_raw"])  # the geometry trained
    assert (tmp_path / "t" / "last.pt").is_file()
    capsys.readouterr()
    sg.run_train(args)
    assert "resumed" in capsys.readouterr().out


def test_an_interrupted_fine_tune_resumes_mid_epoch_to_the_same_weights(tmp_path, monkeypatch,
                                                                        single_thread: None) -> None:
    """From a weights file, resized channels: stopped after step 3 of 4 (mid-epoch: 2 steps per epoch) and resumed,
    it ends with exactly the weights of the uninterrupted run."""
    from safetensors.torch import load_file, save_file

    monkeypatch.setattr(sg, "RUNS", tmp_path)
    torch.manual_seed(1)
    init = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("gd_fmnist").state_dict().items()}, init)
    common = dict(init=str(init), train_scales="2^-1,1,2", below_one="resize", above_one="resize",
                  channel_dropout=0.0, steps=4, checkpoint_every=1)
    straight = load_file(sg.run_train(_train_args(name="straight", **common)))
    sg.run_train(_train_args(name="stopped", max_steps=3, **common))
    assert torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)["step"] == 3
    resumed = load_file(sg.run_train(_train_args(name="stopped", **common)))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert not torch.equal(straight["stem.conv.weight"], load_file(init)["stem.conv.weight"])


def test_orientation_channels_train_the_base_model(tmp_path, monkeypatch, single_thread: None) -> None:
    from safetensors.torch import load_file

    monkeypatch.setattr(sg, "RUNS", tmp_path)
    torch.manual_seed(0)
    initial = timm.create_model("gd_fmnist").state_dict()
    state = load_file(sg.run_train(_train_args(name="o", train_angles="0,90,180,270", steps=2)))
    assert state.keys() == initial.keys()
    assert not torch.equal(state["stem.conv.theta_raw"], initial["stem.conv.theta_raw"])


def test_the_doc_is_made_from_committed_results_only(tmp_path, monkeypatch) -> None:
    """docs/scale.md's generated blocks come from results/scale/ (committed), never from runs/ (not committed)."""
    import shutil

    monkeypatch.setattr(sg, "RUNS", tmp_path / "no-runs")
    monkeypatch.setattr(sg, "DOC", tmp_path / "scale.md")
    monkeypatch.setattr(sg, "PLOT", tmp_path / "scale.png")
    shutil.copyfile(REPO / "docs" / "scale.md", tmp_path / "scale.md")
    sg.write_doc(2000)
    assert (tmp_path / "scale.md").read_text() == (REPO / "docs" / "scale.md").read_text()  # the committed doc
    assert "| `ft_resize_max_e3` | 9 scales, below 1 resized, above 1 resized | max | 2580 | 5000 |" in (
        tmp_path / "scale.md").read_text()


def test_stored_cells_are_reused_only_for_the_weights_they_scored(tmp_path, monkeypatch, single_thread: None) -> None:
    """A cell computed with other weights (a published file since replaced) is recomputed, not shown as the current
    file's; a cell of the same weights is kept. At scale 1 the centred frame is the test image itself."""
    import json

    from gdzoo.data.fashion_mnist import load_fashion_mnist

    monkeypatch.setattr(sg, "RESULTS", tmp_path)
    monkeypatch.setattr(sg, "PROTOCOL_SCALES", (1.0,))
    stale = {"test_scale": 1.0, "plain_canvas": 0.0, "plain_frame": 0.0, "resized_back": 0.0, "weights_sha256": "0"}
    sg.results_path(40, None).write_text(json.dumps({"ff_fmnist|1.000": stale}))
    cell = sg.run_eval(40, None, ("ff_fmnist",))["ff_fmnist|1.000"]

    model = timm.create_model("ff_fmnist.fmnist", pretrained=True).eval()
    images, labels = load_fashion_mnist("test")
    expected = _plain_top1(model, images[:40], labels[:40])
    assert cell["plain_frame"] == pytest.approx(expected, abs=0.01) and cell["plain_frame"] > 50
    assert cell["weights_sha256"] == sg.tensors_sha256(model) != "0"

    monkeypatch.setattr(sg, "eval_cell", lambda *args: pytest.fail("a cell of the same weights was recomputed"))
    assert sg.run_eval(40, None, ("ff_fmnist",))["ff_fmnist|1.000"] == cell


def _plain_top1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Independent reference: the plain model on the 28×28 test images themselves."""
    mean, std = model.pretrained_cfg["mean"][0], model.pretrained_cfg["std"][0]
    with torch.no_grad():
        return 100.0 * float((model((images / 255.0 - mean) / std).argmax(1) == labels).double().mean())


def test_channel_and_rotation_cells_are_reused_only_for_the_weights_and_channels_they_scored(
        tmp_path, monkeypatch, single_thread: None) -> None:
    """The test/select stage (run_channel_eval) and the rotation stage recompute a cell stored under the same tag for
    other weights (a run retrained under its old name) or, for channels, another below/above-one setting; at scale 1
    and angle 0 the plain number is the model on the test images themselves."""
    import json

    from safetensors.torch import save_file

    from gdzoo.data.fashion_mnist import load_fashion_mnist

    monkeypatch.setattr(sg, "RESULTS", tmp_path)
    monkeypatch.setattr(sg, "PROTOCOL_SCALES", (1.0,))
    monkeypatch.setattr(sg, "SCALE_SETS", {"{1}": (1.0,)})
    monkeypatch.setattr(sg, "ROTATION_TEST_ANGLES", (0.0,))
    model = timm.create_model("gd_fmnist.fmnist_table1", pretrained=True).eval()
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    images, labels = load_fashion_mnist("test")
    expected = _plain_top1(model, images[:40], labels[:40])
    args = Namespace(weights=str(weights), tag="w", below_one="resize", above_one="resize", n_test=40)

    stale = {"test_scale": 1.0, "plain_frame": 0.0, "weights_sha256": "0", "below_one": "resize",
             "above_one": "resize"}
    (tmp_path / "test_channels_40.json").write_text(json.dumps({"w|1.000": stale}))
    (tmp_path / "rotation_40.json").write_text(json.dumps({"w|0": {"plain": 0.0, "weights_sha256": "0"}}))
    channel = sg.run_trained_eval(args)["w|1.000"]
    rotation = sg.run_rotation(args)["w|0"]
    assert channel["plain_frame"] == pytest.approx(expected, abs=0.01) and expected > 50
    assert rotation["plain"] == pytest.approx(expected, abs=0.01)
    assert channel["weights_sha256"] == rotation["weights_sha256"] == sg.tensors_sha256(model)

    computed: list[str] = []
    monkeypatch.setattr(sg, "channel_cell", lambda *a: computed.append(a[-1]["below_one"]) or dict(channel))
    monkeypatch.setattr(sg, "rotated", lambda *a: pytest.fail("a rotation cell of the same weights was recomputed"))
    assert sg.run_trained_eval(args)["w|1.000"] == channel and computed == []  # same weights and channels: kept
    assert sg.run_rotation(args)["w|0"] == rotation
    assert sg.run_trained_eval(Namespace(**{**vars(args), "below_one": "steer"}))["w|1.000"]["below_one"] == "steer"
    assert computed == ["steer"]  # other channels under the same tag: recomputed


def test_the_committed_eval_cells_name_the_published_weights_they_scored() -> None:
    """docs/scale.md's eval rows carry the digest of the file :data:`EVAL_TAGS` names today: republishing it without
    re-running the eval stage fails here instead of leaving the old file's numbers in the doc."""
    import json

    done = json.loads(sg.results_path(2000, None).read_text())
    for name, tag in sg.EVAL_TAGS.items():
        digest = sg.tensors_sha256(timm.create_model(tag, pretrained=True))
        cells = [cell for key, cell in done.items() if key.startswith(f"{name}|")]
        assert len(cells) == len(sg.PROTOCOL_SCALES) and all(c["weights_sha256"] == digest for c in cells), name
