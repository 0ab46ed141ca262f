"""``gdzoo demo`` shows the published weights at work: its Fashion-MNIST predictions equal timm's own pipeline on the
same test images, and its MoNuSeg PNG holds the model's mask beside the true one of the printed crop."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from gdzoo.cli.main import main

from _paths import MONUSEG, SHARED_ENV, missing_data

FMNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _idx(path: Path, offset: int) -> np.ndarray:
    """The raw bytes after an idx file's header (labels: 8 bytes, images: 16)."""
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8)[offset:]


def _table_rows(out: str) -> list[list[str]]:
    """Cells of the markdown table lines of ``out`` (header and separator dropped)."""
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_fashion_mnist_predictions_equal_timm_on_the_same_images(capsys, tmp_path: Path) -> None:
    count = 20  # gd_fmnist gets test images 12, 16 and 17 wrong: the marks and the accuracy are exercised
    assert main(["demo", "--models", "gd_fmnist", "--images", str(count), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = _table_rows(out)
    assert len(rows) == count + 1 and rows[-1][0] == "accuracy"

    images = _idx(FMNIST / "t10k-images-idx3-ubyte.gz", 16)[: count * 784].reshape(count, 28, 28)
    labels = _idx(FMNIST / "t10k-labels-idx1-ubyte.gz", 8)[:count]
    model = timm.create_model("gd_fmnist", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.no_grad():
        expected = model(torch.stack([transform(Image.fromarray(im, "L")) for im in images])).argmax(1).tolist()
    assert expected != labels.tolist()  # some are wrong, or the test would not see the marks

    for i, (row, pred, truth) in enumerate(zip(rows, expected, labels.tolist())):
        assert row[:2] == [str(i), CLASSES[truth]]
        assert row[2] == CLASSES[pred] + (" *" if pred != truth else "")
    right = sum(p == t for p, t in zip(expected, labels.tolist()))
    assert rows[-1][2] == f"{right}/{count} = {100 * right / count:.1f} %"
    assert "gd_fmnist.fmnist" in out  # the column names the published weights


@pytest.mark.skipif(not (MONUSEG / "images").is_dir(), reason=missing_data("MoNuSeg images", MONUSEG))
def test_monuseg_png_holds_the_models_mask_beside_the_true_one(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(SHARED_ENV, str(MONUSEG.parents[2]))
    assert main(["demo", "--models", "gd_unet", "--crop", "96", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    where = re.search(r"MoNuSeg: (\S+\.png), rows (\d+):(\d+), cols (\d+):(\d+)", out)
    scores = re.search(r"gd_unet\.monuseg: Dice ([\d.]+), IoU ([\d.]+) on the crop -> (\S+\.png)", out)
    assert where and scores, out
    image, (top, bottom, left, right) = Path(where.group(1)), map(int, where.groups()[1:])
    assert bottom - top == right - left == 96
    png = Path(scores.group(3))
    assert png.parent == tmp_path and png.is_file()

    rgb = np.array(Image.open(image).convert("RGB"))[top:bottom, left:right]
    truth = np.array(Image.open(MONUSEG / "masks" / image.name))[top:bottom, left:right] > 0
    x = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) \
        / torch.tensor(IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        pred = timm.create_model("gd_unet", pretrained=True).eval()(x[None])[0].argmax(0).numpy() == 1

    pair = np.array(Image.open(png))
    assert pair.shape == (96, 192) and set(np.unique(pair)) <= {0, 255}
    np.testing.assert_array_equal(pair[:, :96] == 255, pred)
    np.testing.assert_array_equal(pair[:, 96:] == 255, truth)
    inter = (pred & truth).sum()
    assert 0 < inter < truth.sum()  # a real prediction: neither empty nor a copy of the truth
    assert float(scores.group(1)) == pytest.approx(2 * inter / (pred.sum() + truth.sum()), abs=5e-4)
    assert float(scores.group(2)) == pytest.approx(inter / (pred | truth).sum(), abs=5e-4)


def test_missing_monuseg_is_one_line_and_the_rest_runs(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(SHARED_ENV, str(tmp_path / "nowhere"))
    assert main(["demo", "--models", "unet5,gd_convnext_atto", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("MoNuSeg not found") and str(tmp_path / "nowhere") in lines[0]
    assert lines[0].endswith("skipped unet5")
    assert lines[1].startswith("skipped (no published weights): gd_convnext_atto;") and "--random-init" in lines[1]
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("args, message", [
    (["--models", "nope*"], "--models 'nope*' matches no gdzoo model"),
    (["--images", "0"], "--images must be between 1 and 10000"),
    (["--crop", "4"], "--crop must be at least 16"),
    (["--models", "gd_unet", "--monuseg", "/nonexistent/monuseg"],
     "--monuseg /nonexistent/monuseg does not hold images/"),
])
def test_bad_arguments_are_one_line_errors(capsys, args: list[str], message: str) -> None:
    assert main(["demo", *args]) == 2
    assert message in capsys.readouterr().err


def test_random_init_runs_unpublished_models_only_when_asked_and_says_so(capsys, tmp_path: Path) -> None:
    assert main(["demo", "--models", "gd_convnext_atto", "--images", "2", "--random-init", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "gd_convnext_atto [random init, untrained: its outputs mean nothing]: (2, 3, 224, 224) -> (2, 1000)" in out
    assert "skipped" not in out
