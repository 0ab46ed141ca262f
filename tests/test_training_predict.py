"""Tiled segmentation inference equals a whole-image forward for small receptive fields;
predict/train on real MoNuSeg."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from gdzoo.cli.main import main
from gdzoo.layers import GDConv2d
from gdzoo.training import load_recipe, train
from gdzoo.training.tiling import axis_origins, predict_tiled, whole_image_metrics

from _paths import MONUSEG, REPO, missing_data

needs_monuseg = pytest.mark.skipif(not (MONUSEG / "images").is_dir(),
                                   reason=missing_data("MoNuSeg images", MONUSEG / "images"))


def small_rf_model() -> nn.Module:
    """Receptive-field radius 1 + 3 + 1 = 5 pixels: a 3x3 conv, a 7x7 Gaussian-derivative conv, a 3x3 conv."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), GDConv2d(4, 4, 7, padding="same"), nn.ReLU(),
        nn.Conv2d(4, 2, 3, padding=1)
    ).eval()


@pytest.mark.parametrize(("height", "width", "tile", "overlap"),
                         [(150, 237, 64, 12), (64, 64, 64, 10), (129, 300, 48, 10)])
def test_tiled_equals_whole_image(height: int, width: int, tile: int, overlap: int) -> None:
    model = small_rf_model()
    image = torch.randn(3, height, width)
    with torch.no_grad():
        whole = model(image[None])[0]
    tiled = predict_tiled(model, image, tile=tile, overlap=overlap, batch_size=3)
    assert tiled.shape == whole.shape
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


def test_small_images_are_padded_and_cropped() -> None:
    model = small_rf_model()
    out = predict_tiled(model, torch.randn(3, 40, 90), tile=64, overlap=16)
    assert out.shape == (2, 40, 90) and torch.isfinite(out).all()


def test_too_little_overlap_is_visible_and_bad_overlap_rejected() -> None:
    model = small_rf_model()
    image = torch.randn(3, 150, 150)
    with torch.no_grad():
        whole = model(image[None])[0]
    assert not torch.allclose(predict_tiled(model, image, tile=64, overlap=0), whole, atol=1e-4)
    with pytest.raises(ValueError, match="overlap"):
        predict_tiled(model, image, tile=64, overlap=64)
    assert axis_origins(64, 64, 48) == [0] and axis_origins(100, 64, 48) == [0, 36]


def test_whole_image_metrics_match_numpy_scores_of_one_forward_pass() -> None:
    """Pooled pixel accuracy / Dice / IoU over two images of different sizes, against numpy on a whole-image forward."""
    model = small_rf_model()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((150, 170), (96, 200))]
    masks = [rng.integers(0, 2, im.shape[:2]) for im in images]
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    got = whole_image_metrics(model, images, masks, mean, std, tile=64, overlap=12, batch_size=5)
    preds = []
    with torch.no_grad():
        for im in images:
            x = (torch.from_numpy(im).permute(2, 0, 1).float() / 255
                 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
            preds.append(model(x[None])[0].argmax(0).numpy().ravel())
    pred, truth = np.concatenate(preds), np.concatenate([m.ravel() for m in masks])
    tp = np.sum((pred == 1) & (truth == 1))
    fp, fn = np.sum((pred == 1) & (truth == 0)), np.sum((pred == 0) & (truth == 1))
    assert got["pixels"] == truth.size
    assert got["pixel_acc"] == pytest.approx(100 * np.mean(pred == truth), abs=1e-9)
    assert got["dice"] == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn), abs=1e-9)
    assert got["iou"] == pytest.approx(100 * tp / (tp + fp + fn), abs=1e-9)
    for cm, p, t in zip(got["per_image_confusion"], preds, masks):  # each image's own counts, rows = truth
        t = t.ravel()
        assert cm == [[int(np.sum((t == a) & (p == b))) for b in (0, 1)] for a in (0, 1)]


@needs_monuseg
def test_predict_cli_segments_an_image_of_any_size(tmp_path: Path) -> None:
    image = Image.open(next((MONUSEG / "images").glob("*.png"))).crop((0, 0, 300, 200))
    image.save(tmp_path / "crop.png")
    assert main(["predict", str(tmp_path / "crop.png"), "--model", "gd_unet", "--overlap", "32", "-o",
                 str(tmp_path / "out")]) == 0
    mask = Image.open(tmp_path / "out" / "crop_mask.png")
    overlay = Image.open(tmp_path / "out" / "crop_overlay.png")
    assert mask.size == overlay.size == (300, 200)
    assert set(np.unique(np.array(mask))) <= {0, 255}


@needs_monuseg
def test_segmentation_training_run(tmp_path: Path) -> None:
    recipe = load_recipe(REPO / "configs" / "tiny_monuseg.yaml", [
        f"data.root={MONUSEG}", "data.train_subset=32", "data.val_size=1", "data.tile_stride=192",
        "data.test_subset=16", f"output.dir={tmp_path}", "output.progress=false", "data.full_image_overlap=32",
    ])
    result = train(recipe)
    assert {"pixel_acc", "dice", "iou"} <= set(result.metrics) and 0 <= result.metrics["dice"] <= 100
    assert result.metrics["full_pixels"] == 8 * 1000 * 1000  # the 8 whole test images, not just the 16 tiles
    assert 0 <= result.metrics["full_dice"] <= 100
    assert result.metrics["pixels"] == 16 * 64 * 64
    splits = json.loads((result.run_dir / "splits.json").read_text())
    assert len(splits["val"]) == 1 and len(splits["test"]) == 8
    assert not set(splits["train"]) & (set(splits["val"]) | set(splits["test"]))
    figure = Image.open(result.run_dir / "segmentation_examples.png")
    assert figure.size[0] > 300 and figure.size[1] > 300
